// Zapline on Railway as Infrastructure as Code: the same two services as railway.json (web)
// and pipeline/railway.json (worker). Railway stops reading those config files for legacy
// services on 2026-12-01; a service is managed by one system at a time, so clear a service's
// "Railway Config File" setting before `railway config plan` / `railway config apply`.
//
// Fields are those the IaC reference documents (source, build, start, healthcheck,
// healthcheckTimeout, replicas, preDeploy, env). Drain and overlap, the restart policy and
// watch patterns have no IaC field: drain and overlap are set as Railway's own service
// variables below (tests/test_railway.py keeps them equal to the config files); restart on
// failure is Railway's default; watch patterns stay in the service settings.
import { defineRailway, postgres, preserve, project, redis, service } from "railway/iac";

export default defineRailway(() => {
  const db = postgres("postgres");
  const cache = redis("redis");

  const shared = {
    DATABASE_URL: db.env.DATABASE_URL,
    REDIS_URL: cache.env.REDIS_URL,
    // Your RabbitMQ service's private AMQP URL, e.g. ${{RabbitMQ.RABBITMQ_PRIVATE_URL}}.
    RABBITMQ_URL: preserve(),
    WEBHOOK_TOKEN: preserve(),
    API_TOKENS: preserve(),
    ADMIN_TOKEN: preserve(),
    // Media: web and worker are separate containers, so both need the same bucket.
    S3_BUCKET: preserve(),
    S3_ENDPOINT_URL: preserve(),
    S3_REGION: preserve(),
    AWS_ACCESS_KEY_ID: preserve(),
    AWS_SECRET_ACCESS_KEY: preserve(),
  };

  const web = service("web", {
    start: "python -m pipeline web",
    // Migrations run once per deploy, here only; the worker never migrates.
    preDeploy: "python -m pipeline migrate",
    healthcheck: "/health/ready",
    healthcheckTimeout: 120,
    replicas: 1,
    env: {
      ...shared,
      // gunicorn drains in at most 10 s (graceful_timeout); measured 1.5-3.0 s.
      RAILWAY_DEPLOYMENT_DRAINING_SECONDS: "15",
      RAILWAY_DEPLOYMENT_OVERLAP_SECONDS: "10",
    },
  });

  const worker = service("worker", {
    start: "python -m pipeline worker",
    replicas: 1,
    env: {
      ...shared,
      // Dramatiq waits 15 s for actors, the projector 10 s more; measured 2.5-3.5 s.
      RAILWAY_DEPLOYMENT_DRAINING_SECONDS: "30",
      RAILWAY_DEPLOYMENT_OVERLAP_SECONDS: "5",
    },
  });

  return project("zapline", {
    resources: [db, cache, web, worker],
  });
});
