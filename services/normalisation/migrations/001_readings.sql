-- Readings after the point's ratio, with their quality (see proto_schemas/quality.py).
CREATE TABLE readings (
    point_id integer          NOT NULL,
    ts       timestamptz      NOT NULL,
    value    double precision NOT NULL,
    quality  smallint         NOT NULL,
    PRIMARY KEY (point_id, ts)
);
