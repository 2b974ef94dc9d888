"""Run the normalisation service: `python -m services.normalisation`."""

from libs.service import run_service
from services.normalisation.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "normalisation")
