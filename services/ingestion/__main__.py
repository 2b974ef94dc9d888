"""Run the ingestion service: `python -m services.ingestion`."""

from libs.service import run_service
from services.ingestion.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "ingestion")
