"""Run the reporting service: `python -m services.reporting`."""

from libs.service import run_service
from services.reporting.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "reporting")
