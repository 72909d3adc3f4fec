-- The vector ranking runs a statement prepared once per database session
-- instead of building and parsing its SQL on every search
-- (docs/search-quality.md, "The vector walk without parsing it again").
--
-- 0023's keel.rank_vector built its query with format() and ran it with
-- EXECUTE, because the HNSW index is a partial expression index per model
-- (`embedding::vector(<dimensions>) ... where model = '<model>'`): only a
-- query naming that model and those dimensions literally can use it, so no
-- static statement with parameters could. Every search paid for parsing and
-- analysing that text again. Measured in the database on the 100k-chunk
-- tenant of `bench load --scale 100k` (300 query vectors, three passes):
-- the same query, prepared once and executed, took p50 1.5-1.9 ms against
-- 2.2-2.5 for 0023's function, p95 2.9-3.5 against 4.0-4.8.
--
-- The statement is the same SQL, named after its own text, prepared on first
-- use in each session (Postgres forgets prepared statements with the
-- session; a pooler's DISCARD ALL too, and then it is prepared again). Only a
-- statement of that name whose text is exactly this one is executed, so a
-- statement left by anything else is replaced, never trusted. The query
-- vector, tenant, limit and filter reach it as literals, quoted by format().
--
-- It is still planned for each search (`plan_cache_mode` force_custom_plan
-- for that one statement), as 0023's EXECUTE was: only a plan that knows the
-- tenant can rank a small tenant's few vectors exactly instead of walking a
-- shared graph full of other tenants' vectors (recall@10 0.49 instead of
-- 1.000 for a 900-chunk tenant among 1M vectors, docs/search-quality.md). A
-- cached generic plan, which Postgres may pick after five executions, would
-- walk the graph for every tenant.
--
-- PREPARE and EXECUTE are utility statements, which a STABLE function may
-- not run, so the function is now VOLATILE; it still only reads.
create or replace function keel.rank_vector(
  p_tenant uuid, p_model text, p_dimensions int, p_embedding extensions.vector,
  p_filter jsonb, p_limit int
) returns jsonb
language plpgsql
volatile
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_filtered boolean := p_filter <> '{}'::jsonb;
  v_query text;
  v_name text;
  v_prepare text;
  v_plan_cache_mode text;
  v_ranked jsonb;
begin
  perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
  perform set_config('hnsw.ef_search', greatest(200, p_limit)::text, true);
  -- $1 the query vector, $2 the tenant, $3 the limit, $4 the filter.
  v_query := format($q$
      select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score) order by score desc), '[]'::jsonb)
      from (
        select e.chunk_id, 1 - (e.embedding::extensions.vector(%1$s) <=> $1) as score
        from keel.embeddings e%3$s
        where e.model = %2$L and e.dimensions = %1$s and e.tenant_id = $2%4$s
        order by e.embedding::extensions.vector(%1$s) <=> $1
        limit $3
      ) ranked$q$,
    p_dimensions, p_model,
    case when v_filtered then '
        join keel.chunks c on c.id = e.chunk_id
        join keel.documents d on d.id = c.document_id' else '' end,
    case when v_filtered then ' and d.metadata @> $4' else '' end);
  v_name := 'keel_rank_vector_' || left(md5(v_query), 16);
  v_prepare := format('prepare %I(extensions.vector, uuid, int%s) as%s',
                      v_name, case when v_filtered then ', jsonb' else '' end, v_query);
  if not exists (select 1 from pg_catalog.pg_prepared_statements s
                 where s.name = v_name and s.statement = v_prepare) then
    if exists (select 1 from pg_catalog.pg_prepared_statements s where s.name = v_name) then
      execute format('deallocate %I', v_name);
    end if;
    execute v_prepare;
  end if;
  v_plan_cache_mode := current_setting('plan_cache_mode');
  perform set_config('plan_cache_mode', 'force_custom_plan', true);
  execute format('execute %I(%L, %L, %s%s)', v_name, p_embedding, p_tenant, p_limit,
                 case when v_filtered then ', ' || quote_literal(p_filter) else '' end)
    into v_ranked;
  perform set_config('plan_cache_mode', v_plan_cache_mode, true);
  return v_ranked;
end $$;

revoke all on function keel.rank_vector(uuid, text, int, extensions.vector, jsonb, int) from public, anon, authenticated;

select keel.lock_down_api();
