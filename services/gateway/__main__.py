"""Run the gateway service: `python -m services.gateway`."""

from libs.service import run_service
from services.gateway.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "gateway")
