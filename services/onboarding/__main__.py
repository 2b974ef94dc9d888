"""Run the onboarding service: `python -m services.onboarding`."""

from libs.service import run_service
from services.onboarding.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "onboarding")
