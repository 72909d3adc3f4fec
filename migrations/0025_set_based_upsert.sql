-- Ingest without per-document overhead (docs/search-quality.md, "Ingest").
--
-- 1. keel_upsert_documents works on the whole batch at once, as 0011's does
--    document by document: the batch's replaced chunks are deleted in one
--    statement and its new chunks inserted in another. The keyword triggers
--    of 0018 (postings, statistics deltas, the fold) run per statement, so
--    they now run twice per batch instead of twice per document, which cost
--    more than the chunks themselves.
-- 2. keel.posting_impact has a body parsed at creation and no settings, so
--    the planner inlines it: it is called once per posting (about 50 per
--    chunk), and as a function call it took half the postings' select.
--    Same expression and types, so every stored impact is found again by
--    the delete trigger.
-- 3. The writer holding a tenant's fold lock adds its own keyword counts to
--    the statistics directly, with the others' pending deltas, instead of
--    appending them as deltas and deleting them again in the same fold.
--    Writers still never wait for each other (0018).
-- 4. Autovacuum visits keel.postings after 1% new rows instead of 20%.
--    Keyword search reads postings by index-only scans, which fetch the
--    heap for every page vacuum has not yet marked all-visible: right after
--    a tenant's bulk load its keyword ranking took 7.0-7.8 ms p50 and
--    8.3-11.3 ms p95 (100k chunks, 319 queries, in the database), and
--    3.0-3.4 / 4.4-5.4 ms once vacuumed. At the default 20%, a table of
--    millions of postings waits for hundreds of thousands of new ones first.
--    Vacuum skips pages already all-visible, so visiting more often costs
--    about what the new rows cost.
alter table keel.postings set (autovacuum_vacuum_insert_scale_factor = 0.01);
create or replace function keel.posting_impact(p_tf int, p_length int) returns real
language sql
immutable
parallel safe
return (p_tf * 2.2 / (p_tf + 1.2 * (0.25 + 0.75 * p_length / 100.0)))::real;

-- 0018's trigger, with item 3.
create or replace function keel.index_keywords() returns trigger
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_sign int := case tg_op when 'INSERT' then 1 else -1 end;
  v_tenant uuid;
begin
  if tg_op = 'INSERT' then
    insert into keel.postings (tenant_id, lexeme, impact, chunk_id, tf, title_tf, length)
    select c.tenant_id, t.lexeme, keel.posting_impact(cardinality(t.positions), length(c.search_vector)),
           c.id, cardinality(t.positions), coalesce(cardinality(array_positions(t.weights, 'A')), 0),
           length(c.search_vector)
    from changed c cross join unnest(c.search_vector) t;
  else
    delete from keel.postings p
    using (select c.tenant_id, t.lexeme,
                  keel.posting_impact(cardinality(t.positions), length(c.search_vector)) as impact,
                  c.id as chunk_id
           from changed c cross join unnest(c.search_vector) t) o
    where p.tenant_id = o.tenant_id and p.lexeme = o.lexeme and p.impact = o.impact
      and p.chunk_id = o.chunk_id;
  end if;
  -- Chunks deleted with their tenant have no statistics left to change.
  for v_tenant in select distinct c.tenant_id from changed c
                  where exists (select 1 from keel.tenants t where t.id = c.tenant_id) loop
    if pg_try_advisory_xact_lock(hashtextextended('keel.keyword_stats:' || v_tenant, 0)) then
      -- The fold's holder adds its own counts to the statistics directly,
      -- with every other writer's pending deltas.
      with pending as (
        delete from keel.keyword_stat_deltas where tenant_id = v_tenant returning lexeme, chunks
      ), counted as (
        select lexeme, chunks from pending
        union all
        select l.lexeme, v_sign
        from changed c cross join unnest(tsvector_to_array(c.search_vector)) l (lexeme)
        where c.tenant_id = v_tenant
      )
      insert into keel.keyword_stats as s (tenant_id, lexeme, chunks)
      select v_tenant, lexeme, sum(chunks) from counted group by lexeme having sum(chunks) <> 0
      order by lexeme
      on conflict (tenant_id, lexeme) do update set chunks = s.chunks + excluded.chunks;
      with pending as (
        delete from keel.keyword_total_deltas where tenant_id = v_tenant returning chunks, lexemes
      ), counted as (
        select chunks, lexemes from pending
        union all
        select v_sign * count(*), v_sign * sum(length(c.search_vector)) from changed c
        where c.tenant_id = v_tenant
      )
      insert into keel.keyword_totals as s (tenant_id, chunks, lexemes)
      select v_tenant, sum(chunks), sum(lexemes) from counted
      on conflict (tenant_id) do update
        set chunks = s.chunks + excluded.chunks, lexemes = s.lexemes + excluded.lexemes;
    else
      insert into keel.keyword_stat_deltas (tenant_id, lexeme, chunks)
      select v_tenant, l.lexeme, v_sign * count(*)
      from changed c cross join unnest(tsvector_to_array(c.search_vector)) l (lexeme)
      where c.tenant_id = v_tenant
      group by 2;
      insert into keel.keyword_total_deltas (tenant_id, chunks, lexemes)
      select v_tenant, v_sign * count(*), v_sign * sum(length(c.search_vector))
      from changed c where c.tenant_id = v_tenant;
    end if;
  end loop;
  return null;
end $$;
drop function if exists keel.fold_keyword_deltas(uuid);

create or replace function public.keel_upsert_documents(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_needs text[];
  v_new text[];
  v_changed uuid[];
  v_same uuid[];
  v_retagged int;
  v_rechunk uuid[];
  v_kept keel.kept_vector[];
  v_pending int;
  v_requeued int := 0;
begin
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  -- Lock this tenant's affected rows in id order so concurrent batches cannot deadlock.
  perform 1 from keel.documents d
  where d.tenant_id = v_tenant
    and d.external_id in (select e->>'id' from jsonb_array_elements(args->'documents') e)
  order by d.external_id
  for update;

  select coalesce(array_agg(e.value->>'id' order by e.ordinality)
                    filter (where (d.id is null or d.content_hash <> e.value->>'content_hash')
                                  and jsonb_typeof(e.value->'chunks') is distinct from 'array'), '{}'),
         coalesce(array_agg(e.value->>'id') filter (where d.id is null), '{}'),
         coalesce(array_agg(d.id) filter (where d.content_hash <> e.value->>'content_hash'), '{}'),
         coalesce(array_agg(d.id) filter (where d.content_hash = e.value->>'content_hash'), '{}'),
         count(*) filter (where d.content_hash = e.value->>'content_hash'
                            and (d.metadata is distinct from e.value->'metadata'
                                 or d.source_url is distinct from e.value->>'source_url'))
  into v_needs, v_new, v_changed, v_same, v_retagged
  from jsonb_array_elements(args->'documents') with ordinality e
  left join keel.documents d on d.tenant_id = v_tenant and d.external_id = e.value->>'id';
  if cardinality(v_needs) > 0 then
    return jsonb_build_object('needs_chunks', to_jsonb(v_needs));
  end if;

  with created as (
    insert into keel.documents (tenant_id, external_id, title, content_hash, metadata, source_url)
    select v_tenant, e->>'id', e->>'title', e->>'content_hash', e->'metadata', e->>'source_url'
    from jsonb_array_elements(args->'documents') e
    where e->>'id' = any (v_new)
    returning id
  )
  select v_changed || coalesce(array_agg(id), '{}') into v_rechunk from created;

  update keel.documents d
  set title = e->>'title', content_hash = e->>'content_hash', metadata = e->'metadata',
      source_url = e->>'source_url', updated_at = now()
  from jsonb_array_elements(args->'documents') e
  where d.tenant_id = v_tenant and d.external_id = e->>'id'
    and (d.id = any (v_changed)
         or d.metadata is distinct from e->'metadata' or d.source_url is distinct from e->>'source_url');

  if cardinality(v_changed) > 0 then
    -- Vectors are keyed by their embedding input (title and chunk), so one
    -- whose input did not change is kept, whichever document it moved to.
    select array_agg(row(c.content_hash, e.model, e.dimensions, e.embedding)::keel.kept_vector)
    into v_kept
    from keel.chunks c join keel.embeddings e on e.chunk_id = c.id
    where c.document_id = any (v_changed);
    delete from keel.chunks where document_id = any (v_changed);
  end if;

  insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
  select v_tenant, d.id, (c.ordinality - 1)::int, c.value->>'content', c.value->>'content_hash',
         (c.value->>'token_count')::int,
         setweight(to_tsvector('english', d.title), 'A') || setweight(to_tsvector('english', c.value->>'content'), 'B')
  from jsonb_array_elements(args->'documents') e
  join keel.documents d on d.tenant_id = v_tenant and d.external_id = e->>'id'
  cross join jsonb_array_elements(e->'chunks') with ordinality as c (value, ordinality)
  where d.id = any (v_rechunk);

  if v_kept is not null then
    insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
    select distinct on (c.id, k.model, k.dimensions) c.id, k.model, k.dimensions, v_tenant, k.embedding
    from keel.chunks c
    join unnest(v_kept) k on k.content_hash = c.content_hash
    where c.document_id = any (v_changed)
    on conflict do nothing;
  end if;

  insert into keel.embedding_jobs (chunk_id, model, dimensions, tenant_id)
  select c.id, v_model, v_dimensions, v_tenant
  from keel.chunks c
  where c.document_id = any (v_rechunk)
    and not exists (select 1 from keel.embeddings e
                    where e.chunk_id = c.id and e.model = v_model and e.dimensions = v_dimensions);
  get diagnostics v_pending = row_count;

  -- Unchanged documents queue again their chunks that failed or lack a vector.
  if cardinality(v_same) > 0 then
    insert into keel.embedding_jobs as j (chunk_id, model, dimensions, tenant_id)
    select c.id, v_model, v_dimensions, v_tenant
    from keel.chunks c
    where c.document_id = any (v_same)
      and not exists (select 1 from keel.embeddings e
                      where e.chunk_id = c.id and e.model = v_model and e.dimensions = v_dimensions)
    on conflict (chunk_id, model, dimensions) do update
      set attempts = 0, failed_at = null, run_at = now(), lease_token = null, lease_until = null
      where j.failed_at is not null;
    get diagnostics v_requeued = row_count;
  end if;

  return jsonb_build_object('created', cardinality(v_new),
                            'updated', cardinality(v_changed) + v_retagged,
                            'unchanged', cardinality(v_same) - v_retagged,
                            'chunks_pending', v_pending + v_requeued);
end $$;

drop function if exists keel.replace_chunks(uuid, uuid, text, jsonb, text, int);
drop function if exists keel.requeue_document(uuid, uuid, text, int);

select keel.lock_down_api();
