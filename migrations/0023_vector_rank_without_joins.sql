-- The vector ranking reads the embeddings alone when the search has no
-- metadata filter (most searches). An embedding's chunk and document always
-- exist (deletes cascade), so the join 0021 made for every search was only
-- needed to test the filter, and it cost more than the ranking: the planner
-- joined every embedding of the tenant to its chunk (a sequential scan of
-- all tenants' chunks) and document before sorting by distance. Measured in
-- the database over 150 queries on 2 cores (docs/search-quality.md,
-- "Vector ranking without joins"): p50 10.2 -> 1.0 ms at 1.6k chunks,
-- 25.9 -> 9.0 ms at 7k, 25.9 -> 6.4 ms at 10k; the same chunks returned
-- (overlap of the top 40 ≥ 0.9995, the rest ties and HNSW's approximation).
-- A filtered search keeps the join.

-- The HNSW walk keeps 200 candidates (ef_search) instead of 40, from the
-- recall curve on the real-prose corpus (`bench load --scale 100k`, 319
-- judged queries; recall@10 is the best 10 of the 40 candidates a search
-- takes against the exact 10 of a sequential scan):
--
-- | ef_search                                  | 40    | 100   | 200   |
-- |--------------------------------------------|-------|-------|-------|
-- | 100k-chunk tenant, 114k vectors in all     | 0.850 | 0.928 | 0.959 |
-- | 10k-chunk tenant, 24k vectors in all       | 0.982 | 0.996 | 0.999 |
--
-- 200 is the smallest of these at or above 0.95 at 100k. The walk cost
-- p50 / p95 1.9 / 7.8 ms at 40, 1.5 / 3.3 at 100 and 2.5 / 5.7 at 200 on a
-- 228k-vector index. A graph built with ef_construction 128 instead of 64
-- (twice the build time) gained 0.02 at 40 and less above, not worth
-- rebuilding deployed indexes for. Small tenants are mostly ranked by an
-- exact scan the planner chooses itself. (Folded in here before 0023
-- landed.)
create or replace function keel.rank_vector(
  p_tenant uuid, p_model text, p_dimensions int, p_embedding extensions.vector,
  p_filter jsonb, p_limit int
) returns jsonb
language plpgsql
stable
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_ranked jsonb;
begin
  perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
  perform set_config('hnsw.ef_search', greatest(200, p_limit)::text, true);
  if p_filter = '{}'::jsonb then
    execute format($q$
      select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score) order by score desc), '[]'::jsonb)
      from (
        select e.chunk_id, 1 - (e.embedding::extensions.vector(%1$s) <=> $1) as score
        from keel.embeddings e
        where e.model = %2$L and e.dimensions = %1$s and e.tenant_id = $2
        order by e.embedding::extensions.vector(%1$s) <=> $1
        limit $3
      ) ranked$q$, p_dimensions, p_model)
    into v_ranked
    using p_embedding, p_tenant, p_limit;
  else
    execute format($q$
      select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score) order by score desc), '[]'::jsonb)
      from (
        select e.chunk_id, 1 - (e.embedding::extensions.vector(%1$s) <=> $1) as score
        from keel.embeddings e
        join keel.chunks c on c.id = e.chunk_id
        join keel.documents d on d.id = c.document_id
        where e.model = %2$L and e.dimensions = %1$s and e.tenant_id = $2
          and d.metadata @> $3
        order by e.embedding::extensions.vector(%1$s) <=> $1
        limit $4
      ) ranked$q$, p_dimensions, p_model)
    into v_ranked
    using p_embedding, p_tenant, p_filter, p_limit;
  end if;
  return v_ranked;
end $$;

revoke all on function keel.rank_vector(uuid, text, int, extensions.vector, jsonb, int) from public, anon, authenticated;

select keel.lock_down_api();
