#!/usr/bin/env bash
# Starts PostgreSQL and Redis on 127.0.0.1 when they are installed but not answering.
# The shared-store tests need them; everything else runs without.
set -uo pipefail

if command -v pg_isready >/dev/null 2>&1; then
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "services: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
    pg_isready -h 127.0.0.1 -p 5432 || echo "services: PostgreSQL is not answering on 5432"
else
    echo "services: PostgreSQL is not installed; its store's tests will fail"
fi

if command -v redis-cli >/dev/null 2>&1; then
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "services: starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
    fi
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && echo "services: Redis is answering" \
        || echo "services: Redis is not answering on 6379"
else
    echo "services: Redis is not installed; its store's tests will fail"
fi
exit 0
