-- One PostgreSQL for the stack: the `mlflow` database is created by the image (POSTGRES_DB); this adds
-- Prefect's. Runs once, when the data volume is empty.
CREATE USER prefect WITH PASSWORD 'prefect';
CREATE DATABASE prefect OWNER prefect;
