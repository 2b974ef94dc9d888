"""Run the registry service: `python -m services.registry`."""

from libs.service import run_service
from services.registry.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "registry")
