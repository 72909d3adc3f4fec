-- Every model's HNSW graph is built with a candidate list of 200
-- (ef_construction) instead of pgvector's default 64, so a topic that arrived
-- early stays reachable when the graph grows around it
-- (docs/search-quality.md, "HNSW recall: the order the graph grew in").
--
-- Measured on the 100k-chunk tenant of `bench load --scale 100k` (114k
-- vectors in the index, 319 queries, recall@10 of the best 10 of 40 against
-- an exact scan, ef_search 200, each graph built again from the same rows in
-- the order they were ingested):
--
-- | ef_construction | graphs built | recall@10 at ef_search 200 | MED's 30 queries alone | build | one insert |
-- |---|---|---|---|---|---|
-- | 64 (before) | 7 | 0.914-0.992, 5 of 7 under 0.95 | 0.66 (one graph) | 16-32 s | 0.9 ms |
-- | 128 | 5 | 0.961-0.985 | 0.70-0.90 | 30-57 s | 1.7 ms |
-- | 200 | 3 | 0.988-0.995 | 0.90-0.97 | 44-53 s | 2.8 ms |
--
-- The same rows inserted in a shuffled order gave 0.979-0.988 at 64 (3
-- graphs; MED 0.95-0.99): the misses come from the order the graph grew in,
-- not from the data. The medical abstracts were among the first rows; 100k
-- passages about software followed. In one graph, 4 of MED's 30 queries
-- found none of their exact 10 at ef_search 200 and all of them at 1,000:
-- the topic was still connected, but a walk from the entry point seldom
-- found the way in. The likeliest reading is that the later inserts took the
-- graph's few long links into that topic for closer neighbours of their own;
-- a longer candidate list while inserting keeps more of them. Tenants ingest
-- by topic, so a shared index grows exactly like that.
--
-- Only new graphs and new inserts pay for it: an insert searches with the
-- index's ef_construction, about 2.8 ms instead of 0.9 per vector in the
-- 114k graph (2,000 of the tenant's vectors deleted and inserted again in one
-- statement). Mostly the embeddings cron pays; a document update that keeps
-- some of its chunks' vectors (keel_upsert_documents) inserts them again and
-- pays it too. Existing indexes get the setting here: a catalogue change
-- under a brief exclusive lock on each index, which gives up after 5 s
-- rather than queue searches behind a long transaction. Their graphs are not
-- rebuilt, which would block writes for minutes inside a migration; vectors
-- inserted from now on use it, and `reindex index concurrently` rebuilds a
-- graph with it without blocking (README, "How search works").
set local lock_timeout = '5s';
do $$
declare
  v_index regclass;
begin
  for v_index in
    select i.indexrelid::regclass
    from pg_catalog.pg_index i
    join pg_catalog.pg_class c on c.oid = i.indexrelid
    join pg_catalog.pg_am am on am.oid = c.relam
    where i.indrelid = 'keel.embeddings'::regclass and am.amname = 'hnsw'
  loop
    execute format('alter index %s set (ef_construction = 200)', v_index);
  end loop;
end $$;

-- 0011's function, building a missing index with those settings.
create or replace function public.keel_prepare_embedding_model(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_limit int := (args->>'limit')::int;
  v_index text := 'embeddings_hnsw_' || left(md5(v_model || ':' || v_dimensions), 16);
  v_row keel.embedding_models;
  v_activated boolean := false;
  v_index_created boolean := false;
  v_scanned int;
  v_last bigint;
  v_queued int := 0;
begin
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  select * into v_row from keel.embedding_models where model = v_model and dimensions = v_dimensions;
  if exists (select 1 from keel.embedding_models o
             where not (o.model = v_model and o.dimensions = v_dimensions)
               and o.prepared_at > v_row.prepared_at) then
    perform pg_advisory_xact_lock(hashtext('keel.prepare_embedding_model'));
    update keel.embedding_models
    set prepared_at = now(), backfill_after = 0
    where model = v_model and dimensions = v_dimensions
      and exists (select 1 from keel.embedding_models o
                  where not (o.model = v_model and o.dimensions = v_dimensions)
                    and o.prepared_at > keel.embedding_models.prepared_at)
    returning * into v_row;
    v_activated := found;
    select * into v_row from keel.embedding_models where model = v_model and dimensions = v_dimensions;
  end if;

  if to_regclass('keel.' || v_index) is null then
    perform pg_advisory_xact_lock(hashtext('keel.prepare_embedding_model'));
    execute format(
      'create index if not exists %I on keel.embeddings using hnsw ((embedding::extensions.vector(%s)) extensions.vector_cosine_ops) with (m = 16, ef_construction = 200) where model = %L and dimensions = %s',
      v_index, v_dimensions, v_model, v_dimensions);
    v_index_created := true;
  end if;

  if v_row.backfill_after is not null then
    with batch as (
      select c.id, c.tenant_id from keel.chunks c
      where c.id > v_row.backfill_after
      order by c.id
      limit v_limit
    ), queued as (
      insert into keel.embedding_jobs (chunk_id, model, dimensions, tenant_id)
      select b.id, v_model, v_dimensions, b.tenant_id
      from batch b
      where not exists (select 1 from keel.embeddings e
                        where e.chunk_id = b.id and e.model = v_model and e.dimensions = v_dimensions)
      on conflict do nothing
      returning 1
    )
    select (select count(*) from batch), (select max(id) from batch), (select count(*) from queued)
    into v_scanned, v_last, v_queued;
    update keel.embedding_models
    set backfill_after = case when v_scanned < v_limit then null else v_last end
    where model = v_model and dimensions = v_dimensions and backfill_after is not distinct from v_row.backfill_after;
  end if;

  return jsonb_build_object(
    'activated', v_activated,
    'index_created', v_index_created,
    'queued', v_queued,
    'done', not exists (select 1 from keel.embedding_models
                        where model = v_model and dimensions = v_dimensions and backfill_after is not null));
end $$;

select keel.lock_down_api();
