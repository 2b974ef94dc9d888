"""Run the command service: `python -m services.command`."""

from libs.service import run_service
from services.command.app import create_app

if __name__ == "__main__":
    run_service(create_app(), "command")
