# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# gateway/default_config.yaml (package data for `shopino-gateway demo`) links to config/gateway.yaml
COPY config ./config
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/shopino shopino \
    && mkdir -p /etc/shopino /var/lib/shopino && chown shopino /var/lib/shopino
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/gateway.yaml /etc/shopino/gateway.yaml
ENV SHOPINO_GATEWAY_CONFIG=/etc/shopino/gateway.yaml \
    SHOPINO_DEMO_HOST=0.0.0.0 \
    SHOPINO_DEMO_STATE=local:/var/lib/shopino/state \
    SHOPINO_DEMO_AUDIT_SPOOL=/var/lib/shopino/audit-spool \
    PYTHONUNBUFFERED=1
USER shopino
VOLUME ["/etc/shopino", "/var/lib/shopino"]
EXPOSE 8443 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import ssl,urllib.request as u; c=ssl._create_unverified_context(); u.urlopen('https://127.0.0.1:8443/_gateway/health', context=c, timeout=2)" || exit 1
ENTRYPOINT ["shopino-gateway"]
CMD ["run"]
