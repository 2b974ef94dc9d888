# One image for every gridfleet service; the container's command picks the service:
#   docker run gridfleet python -m services.registry
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRIDFLEET_HTTP_HOST=0.0.0.0

WORKDIR /app

COPY pyproject.toml README.md ./
COPY libs ./libs
COPY proto_schemas ./proto_schemas
COPY services ./services
COPY deploy ./deploy

# Installs gridfleet and its dependencies. The source stays in /app, the working directory, so
# `python -m services.<name>` also finds files that are not Python modules (SQL migrations, configs).
RUN pip install . \
    && groupadd --system --gid 10001 gridfleet \
    && useradd --system --uid 10001 --gid gridfleet --create-home --home-dir /home/gridfleet gridfleet

USER 10001:10001

# gateway 8000, registry 8001, ingestion 8002, normalisation 8003, aggregation 8004, reporting 8005,
# command 8006, onboarding 8007
EXPOSE 8000-8007

CMD ["python", "-m", "services.gateway"]
