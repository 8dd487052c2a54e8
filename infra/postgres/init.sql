-- Runs once, when the PostgreSQL data volume is first initialised (docker-entrypoint-initdb.d).
-- pgvector stores the embeddings used for retrieval (Tier 3+).
CREATE EXTENSION IF NOT EXISTS vector;
