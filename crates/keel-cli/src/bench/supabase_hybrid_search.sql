-- The peer of `keel_search` in `keel bench load`: the hybrid search function
-- of Supabase's documentation (https://supabase.com/docs/guides/ai/hybrid-search,
-- "hybrid_search"), the one most Supabase projects paste, reproduced over
-- Keel's own tables so both rank the same chunks with the same vectors.
-- Kept as documented (ts_rank_cd over websearch_to_tsquery, row_number()
-- rankings of least(match_count, 30) * 2 candidates each, full outer join,
-- RRF with k 50 and weights 1), except what Keel's schema requires: the
-- tenant's rows only (the documented function searches one table of one
-- owner), Keel's `search_vector` as its `fts` column, and cosine distance
-- `<=>` instead of `<#>` (the vectors are normalised, so the order is the
-- same, and Keel's HNSW index is built for cosine). Created in the bench
-- database only, never by a migration.
create schema if not exists bench;

create or replace function bench.supabase_hybrid_search(
  query_text text,
  query_embedding extensions.vector,
  match_count int,
  tenant uuid,
  full_text_weight float = 1,
  semantic_weight float = 1,
  rrf_k int = 50
) returns setof bigint
language sql
set search_path = keel, extensions, pg_catalog
as $$
with full_text as (
  select c.id,
         row_number() over (order by ts_rank_cd(c.search_vector, websearch_to_tsquery('english', query_text)) desc) as rank_ix
  from keel.chunks c
  where c.tenant_id = tenant
    and c.search_vector @@ websearch_to_tsquery('english', query_text)
  order by rank_ix
  limit least(match_count, 30) * 2
),
semantic as (
  select e.chunk_id as id,
         row_number() over (order by e.embedding <=> query_embedding) as rank_ix
  from keel.embeddings e
  where e.tenant_id = tenant
  order by rank_ix
  limit least(match_count, 30) * 2
)
select coalesce(full_text.id, semantic.id)
from full_text
full outer join semantic on full_text.id = semantic.id
order by coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
       + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight desc
limit least(match_count, 30)
$$;
