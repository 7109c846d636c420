# hub: regional MSSanté interoperability hub.
#   docker build -t hub .
#   docker run -v /srv/hub:/var/lib/hub -v /etc/hub:/etc/hub:ro -p 587:2525 -p 127.0.0.1:8025:8025 hub
# The embedded PostgreSQL lives in the /var/lib/hub volume unless HUB_DATABASE_URL points at a server.
# The routing rules shipped are in /opt/hub/routing_rules, outside /etc/hub, so that mounting /etc/hub (config,
# certificates) does not hide them; point [rules] dir at /etc/hub/routing_rules to use your own.
# .dockerignore keeps var/ (a local database with message bodies and the audit key) out of the build context.
FROM python:3.11-slim-bookworm

RUN useradd --system --home-dir /var/lib/hub --shell /usr/sbin/nologin hub \
 && mkdir -p /var/lib/hub /etc/hub && chown hub:hub /var/lib/hub

WORKDIR /opt/hub
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY routing_rules /opt/hub/routing_rules
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER hub
ENV HUB_DATA_DIR=/var/lib/hub \
    HUB_RULES_DIR=/opt/hub/routing_rules \
    HUB_SMTP_LISTEN=0.0.0.0:2525 \
    HUB_HTTP_LISTEN=0.0.0.0:8025
EXPOSE 2525 8025
VOLUME ["/var/lib/hub"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4)" || exit 1
ENTRYPOINT ["hub"]
CMD ["serve"]
