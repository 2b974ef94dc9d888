"""Run the aggregation service: `python -m services.aggregation`."""

from libs.service import run_service
from services.aggregation.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "aggregation")
