-- Polled data sources (Modbus TCP) carry the status the poller reports: online after a good read, offline
-- after consecutive failed polls.
ALTER TABLE data_sources ADD COLUMN status text CHECK (status IN ('online', 'offline'));
ALTER TABLE data_sources ADD COLUMN status_changed_at timestamptz;
