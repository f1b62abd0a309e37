# zmqbalance engine image: serves on port 7070 on every interface inside the container, with its
# data directory on a volume.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY zmqbalance ./zmqbalance
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/zmqbalance --create-home zmqbalance

USER zmqbalance
VOLUME ["/var/lib/zmqbalance"]
EXPOSE 7070
STOPSIGNAL SIGTERM
CMD ["zmqbalance", "serve", "--bind", "tcp://0.0.0.0:7070", "--data-dir", "/var/lib/zmqbalance/data"]
