-- Scheduled website and sitemap ingestion (README, "Sources"): a tenant's
-- sources, the state of every page a source listed (validators, content
-- hash, the document it became), and per-host politeness and robots.txt
-- shared by every crawl run, so overlapping cron runs stay polite too.
--
-- A source is crawled in cycles: a claimed, due source starts a cycle
-- (state `listing`), its sitemap's URLs are recorded as seen in that cycle,
-- then pages are fetched (state `fetching`) across as many runs as it takes,
-- each page at most once per cycle. Only a cycle whose listing was complete
-- (the whole sitemap loaded and parsed) removes the pages it did not see.

create table if not exists keel.sources (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  kind text not null check (kind in ('sitemap', 'page')),
  url text not null,
  -- scheme://host:port: the key of politeness and robots.txt.
  host text not null,
  schedule text not null check (schedule in ('hourly', 'daily')),
  include text[] not null default '{}',
  exclude text[] not null default '{}',
  max_pages int not null check (max_pages between 1 and 50000),
  state text not null default 'idle' check (state in ('idle', 'listing', 'fetching')),
  cycle int not null default 0,
  cycle_started_at timestamptz,
  listing_complete boolean not null default false,
  -- Outcome counts of the current cycle; copied into last_run when it ends.
  cycle_stats jsonb not null default '{}',
  next_run_at timestamptz not null default now(),
  lease_token uuid,
  lease_until timestamptz,
  last_run jsonb,
  created_at timestamptz not null default now(),
  unique (tenant_id, url)
);
create index if not exists sources_due on keel.sources (next_run_at);

create table if not exists keel.source_pages (
  source_id uuid not null references keel.sources (id) on delete cascade,
  url text not null,
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  -- The document's external id (derived from the source and the canonical URL).
  document_id text,
  canonical_url text,
  etag text,
  last_modified text,
  content_hash text,
  status text not null default 'pending'
    check (status in ('pending', 'ok', 'gone', 'disallowed', 'failed', 'unsupported')),
  last_error text,
  seen_cycle int not null,
  fetched_cycle int not null default 0,
  fetched_at timestamptz,
  primary key (source_id, url)
);
create index if not exists source_pages_tenant on keel.source_pages (tenant_id);
create index if not exists source_pages_pending on keel.source_pages (source_id, fetched_cycle, url);

-- One row per crawled host (scheme://host:port), shared by every run and
-- tenant: who holds it (one request at a time), when the next request may
-- start, and its robots.txt.
create table if not exists keel.crawl_hosts (
  host text primary key,
  next_allowed_at timestamptz not null default now(),
  held_by text,
  held_until timestamptz,
  robots_status text check (robots_status in ('rules', 'allow_all', 'disallow_all')),
  robots_body text,
  robots_fetched_at timestamptz
);

create or replace function keel.source_json(s keel.sources) returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object(
    'id', s.id, 'type', s.kind, 'url', s.url, 'schedule', s.schedule,
    'include', to_jsonb(s.include), 'exclude', to_jsonb(s.exclude), 'max_pages', s.max_pages,
    'created_at', s.created_at,
    'state', s.state,
    'next_run_at', case when s.state = 'idle' then s.next_run_at end,
    'pages', (select count(*) from keel.source_pages p where p.source_id = s.id and p.document_id is not null),
    'current_run', case when s.state <> 'idle' then jsonb_build_object(
      'cycle', s.cycle, 'started_at', s.cycle_started_at,
      'pages_listed', (select count(*) from keel.source_pages p where p.source_id = s.id and p.seen_cycle = s.cycle),
      'pages_pending', (select count(*) from keel.source_pages p
                        where p.source_id = s.id and p.seen_cycle = s.cycle and p.fetched_cycle < s.cycle)
    ) || s.cycle_stats end,
    'last_run', s.last_run);
$$;

-- Removes the named documents of a source's tenant, except those another
-- page of the source still becomes (two URLs with one canonical URL).
create or replace function keel.source_drop_documents(p_source uuid, p_tenant uuid, p_ids text[]) returns int
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_count int;
begin
  delete from keel.documents d
  where d.tenant_id = p_tenant and d.external_id = any(p_ids)
    and not exists (select 1 from keel.source_pages p
                    where p.source_id = p_source and p.document_id = d.external_id);
  get diagnostics v_count = row_count;
  return v_count;
end $$;

create or replace function keel.source_id_arg(args jsonb) returns uuid
language plpgsql
immutable
set search_path = keel, pg_catalog
as $$
begin
  if coalesce(args->>'id', '') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    raise exception 'no source "%"', args->>'id' using errcode = 'P0002';
  end if;
  return (args->>'id')::uuid;
end $$;

-- API -------------------------------------------------------------------------

create or replace function public.keel_create_source(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_source keel.sources;
begin
  -- Serialises creations per tenant, so the count below cannot be raced.
  perform 1 from keel.tenants t where t.id = v_tenant for update;
  if (select count(*) from keel.sources s where s.tenant_id = v_tenant) >= (args->>'max_sources')::int then
    raise exception 'a tenant may have at most % sources; delete one first', args->>'max_sources'
      using errcode = '23P01';
  end if;
  insert into keel.sources (tenant_id, kind, url, host, schedule, include, exclude, max_pages)
  values (v_tenant, args->>'type', args->>'url', args->>'host', args->>'schedule',
          array(select jsonb_array_elements_text(args->'include')),
          array(select jsonb_array_elements_text(args->'exclude')),
          (args->>'max_pages')::int)
  on conflict (tenant_id, url) do nothing
  returning * into v_source;
  if v_source.id is null then
    raise exception 'a source for "%" already exists', args->>'url' using errcode = '23505';
  end if;
  perform keel.audit(args, 'source.create', v_source.id::text, v_tenant,
                     jsonb_build_object('type', v_source.kind, 'url', v_source.url));
  return keel.source_json(v_source);
end $$;

create or replace function public.keel_list_sources(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('sources',
    coalesce(jsonb_agg(keel.source_json(s) order by s.created_at, s.id), '[]'::jsonb))
  from keel.sources s
  where s.tenant_id = keel.resolve_tenant(args);
$$;

create or replace function public.keel_get_source(args jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources;
begin
  select * into v_source from keel.sources s
  where s.id = keel.source_id_arg(args) and s.tenant_id = keel.resolve_tenant(args);
  if v_source.id is null then
    raise exception 'no source "%"', args->>'id' using errcode = 'P0002';
  end if;
  return keel.source_json(v_source);
end $$;

-- The source, its pages and the documents they became.
create or replace function public.keel_delete_source(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_source keel.sources;
  v_ids text[];
  v_documents int;
begin
  delete from keel.sources s where s.id = keel.source_id_arg(args) and s.tenant_id = v_tenant
  returning * into v_source;
  if v_source.id is null then
    raise exception 'no source "%"', args->>'id' using errcode = 'P0002';
  end if;
  -- The pages went with the source (cascade); their documents go now.
  select array_agg(d.external_id) into v_ids from keel.documents d
  where d.tenant_id = v_tenant and d.external_id like 'sources/' || v_source.id || '/%';
  v_documents := keel.source_drop_documents(v_source.id, v_tenant, coalesce(v_ids, '{}'));
  perform keel.audit(args, 'source.delete', v_source.id::text, v_tenant,
                     jsonb_build_object('url', v_source.url, 'documents_deleted', v_documents));
  return jsonb_build_object('deleted', v_source.id, 'documents_deleted', v_documents);
end $$;

-- Crawling ---------------------------------------------------------------------

-- Claims one source under a lease: the one named by `id` (the caller's,
-- `POST /api/sources/{id}/sync`: due now), else the most overdue source
-- not in `skip`. An idle source starts a new cycle. `busy` when the named
-- source is held by another run.
create or replace function public.keel_claim_source(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_id uuid;
  v_source keel.sources;
begin
  if args->>'id' is not null then
    select s.id into v_id from keel.sources s
    where s.id = keel.source_id_arg(args) and s.tenant_id = keel.resolve_tenant(args);
    if v_id is null then
      raise exception 'no source "%"', args->>'id' using errcode = 'P0002';
    end if;
    select * into v_source from keel.sources s
    where s.id = v_id and (s.lease_until is null or s.lease_until < now())
    for update skip locked;
    if v_source.id is null then
      return jsonb_build_object('source', null, 'busy', true);
    end if;
  else
    select * into v_source from keel.sources s
    where (s.state <> 'idle' or s.next_run_at <= now())
      and (s.lease_until is null or s.lease_until < now())
      and s.id <> all(array(select jsonb_array_elements_text(coalesce(args->'skip', '[]'))::uuid))
    order by s.next_run_at, s.id
    limit 1
    for update skip locked;
    if v_source.id is null then
      return jsonb_build_object('source', null, 'busy', false);
    end if;
  end if;
  if v_source.state = 'idle' then
    update keel.sources s
    set state = 'listing', cycle = s.cycle + 1, cycle_started_at = now(), listing_complete = false,
        cycle_stats = '{}'
    where s.id = v_source.id;
  end if;
  update keel.sources s
  set lease_token = gen_random_uuid(), lease_until = now() + make_interval(secs => (args->>'lease_seconds')::int)
  where s.id = v_source.id
  returning * into v_source;
  return jsonb_build_object('busy', false, 'source', jsonb_build_object(
    'id', v_source.id, 'tenant_id', v_source.tenant_id, 'type', v_source.kind, 'url', v_source.url,
    'host', v_source.host, 'include', to_jsonb(v_source.include), 'exclude', to_jsonb(v_source.exclude),
    'max_pages', v_source.max_pages, 'state', v_source.state, 'cycle', v_source.cycle,
    'lease_token', v_source.lease_token));
end $$;

-- The source row when `lease_token` still holds it, locked.
create or replace function keel.leased_source(args jsonb) returns keel.sources
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources;
begin
  select * into v_source from keel.sources s
  where s.id = (args->>'id')::uuid and s.lease_token = (args->>'lease_token')::uuid
  for update;
  return v_source;
end $$;

-- Records a batch of listed URLs as seen in the current cycle (new ones
-- within the tenant's page quota); with `done`, the listing is over:
-- `complete` says whether the sitemap loaded and parsed whole. An
-- incomplete listing carries every known page into the cycle, so they are
-- refreshed and none is removed.
create or replace function public.keel_record_source_listing(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources := keel.leased_source(args);
  v_room int;
  v_added int := 0;
  v_refused int;
  v_urls text[] := array(select jsonb_array_elements_text(coalesce(args->'urls', '[]')));
begin
  if v_source.id is null then
    return jsonb_build_object('lease_lost', true);
  end if;
  update keel.source_pages p set seen_cycle = v_source.cycle
  where p.source_id = v_source.id and p.url = any(v_urls);
  -- Serialises the quota count of the tenant's concurrent listings.
  perform 1 from keel.tenants t where t.id = v_source.tenant_id for update;
  v_room := greatest(0, (args->>'max_pages_per_tenant')::int
                        - (select count(*) from keel.source_pages p where p.tenant_id = v_source.tenant_id));
  with fresh as (
    select u.url from unnest(v_urls) with ordinality u(url, n)
    where not exists (select 1 from keel.source_pages p where p.source_id = v_source.id and p.url = u.url)
    order by u.n
    limit v_room
  ), inserted as (
    insert into keel.source_pages (source_id, url, tenant_id, seen_cycle)
    select v_source.id, f.url, v_source.tenant_id, v_source.cycle from fresh f
    on conflict do nothing
    returning 1
  )
  select count(*) into v_added from inserted;
  v_refused := (select count(*) from unnest(v_urls) u(url)
                where not exists (select 1 from keel.source_pages p where p.source_id = v_source.id and p.url = u.url));
  update keel.sources s
  set cycle_stats = jsonb_set(s.cycle_stats, '{over_quota}',
                              to_jsonb(coalesce((s.cycle_stats->>'over_quota')::int, 0) + v_refused))
  where s.id = v_source.id and v_refused > 0;
  if (args->>'done')::boolean then
    if not (args->>'complete')::boolean then
      update keel.source_pages p set seen_cycle = v_source.cycle where p.source_id = v_source.id;
    end if;
    update keel.sources s
    set state = 'fetching', listing_complete = (args->>'complete')::boolean,
        cycle_stats = case when args->>'error' is null then s.cycle_stats
                           else s.cycle_stats || jsonb_build_object('error', args->>'error') end
    where s.id = v_source.id;
  end if;
  return jsonb_build_object('lease_lost', false, 'added', v_added, 'over_quota', v_refused);
end $$;

-- Pages of the current cycle not fetched yet in it, with what is known
-- about each (validators, content hash, document).
create or replace function public.keel_pending_source_pages(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources := keel.leased_source(args);
begin
  if v_source.id is null then
    return jsonb_build_object('lease_lost', true, 'pages', '[]'::jsonb);
  end if;
  return jsonb_build_object('lease_lost', false, 'pages', coalesce((
    select jsonb_agg(jsonb_build_object('url', p.url, 'etag', p.etag, 'last_modified', p.last_modified,
                                        'content_hash', p.content_hash, 'document_id', p.document_id)
                     order by p.url)
    from (select * from keel.source_pages p
          where p.source_id = v_source.id and p.fetched_cycle < v_source.cycle and p.seen_cycle = v_source.cycle
          order by p.url
          limit (args->>'limit')::int) p), '[]'::jsonb));
end $$;

create or replace function keel.release_crawl_host(p_host text, p_holder text, p_delay_ms int) returns void
language sql
set search_path = keel, pg_catalog
as $$
  update keel.crawl_hosts h
  set held_by = null, held_until = null,
      next_allowed_at = now() + make_interval(secs => p_delay_ms / 1000.0)
  where h.host = p_host and h.held_by = p_holder;
$$;

-- One request at a time per host, with a pause between requests, across
-- every run: takes the host for `hold_ms` (the request's time limit) or
-- says how long to wait.
create or replace function public.keel_acquire_crawl_host(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_host keel.crawl_hosts;
  v_free_at timestamptz;
begin
  insert into keel.crawl_hosts (host) values (args->>'host') on conflict do nothing;
  select * into v_host from keel.crawl_hosts h where h.host = args->>'host' for update;
  v_free_at := greatest(v_host.next_allowed_at,
                        case when v_host.held_by is distinct from args->>'holder' then v_host.held_until end);
  if v_free_at > now() then
    return jsonb_build_object('wait_ms', ceil(extract(epoch from v_free_at - now()) * 1000)::bigint);
  end if;
  update keel.crawl_hosts h
  set held_by = args->>'holder', held_until = now() + make_interval(secs => (args->>'hold_ms')::int / 1000.0)
  where h.host = v_host.host;
  return jsonb_build_object('wait_ms', 0);
end $$;

create or replace function public.keel_release_crawl_host(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
begin
  perform keel.release_crawl_host(args->>'host', args->>'holder', (args->>'delay_ms')::int);
  return '{}'::jsonb;
end $$;

-- The host's cached robots.txt when fetched within `max_age_seconds`.
create or replace function public.keel_cached_robots(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select coalesce((
    select jsonb_build_object('status', h.robots_status, 'body', h.robots_body)
    from keel.crawl_hosts h
    where h.host = args->>'host' and h.robots_status is not null
      and h.robots_fetched_at > now() - make_interval(secs => (args->>'max_age_seconds')::int)),
    'null'::jsonb);
$$;

create or replace function public.keel_store_robots(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
begin
  insert into keel.crawl_hosts (host, robots_status, robots_body, robots_fetched_at)
  values (args->>'host', args->>'status', args->>'body', now())
  on conflict (host) do update
  set robots_status = excluded.robots_status, robots_body = excluded.robots_body,
      robots_fetched_at = excluded.robots_fetched_at;
  return '{}'::jsonb;
end $$;

-- What fetching one page of the current cycle came to. Releases the host
-- the fetch held (when `host` is given), updates the page, counts the
-- outcome, and removes the page's document when the page is gone or
-- disallowed, or the document it became when that changed.
create or replace function public.keel_record_source_page(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources := keel.leased_source(args);
  v_page keel.source_pages;
  v_outcome text := args->>'outcome';
  v_removed int := 0;
begin
  if args->>'host' is not null then
    perform keel.release_crawl_host(args->>'host', args->>'holder', (args->>'delay_ms')::int);
  end if;
  if v_source.id is null then
    return jsonb_build_object('lease_lost', true, 'documents_removed', 0);
  end if;
  select * into v_page from keel.source_pages p where p.source_id = v_source.id and p.url = args->>'url' for update;
  if v_page.url is null then
    return jsonb_build_object('lease_lost', false, 'documents_removed', 0);
  end if;
  if v_outcome in ('changed', 'unchanged') then
    update keel.source_pages p
    set status = 'ok', last_error = null, document_id = args->>'document_id',
        canonical_url = args->>'canonical_url', etag = args->>'etag', last_modified = args->>'last_modified',
        content_hash = args->>'content_hash', fetched_cycle = v_source.cycle, fetched_at = now()
    where p.source_id = v_source.id and p.url = v_page.url;
  elsif v_outcome in ('gone', 'disallowed') then
    update keel.source_pages p
    set status = v_outcome, last_error = null, document_id = null, canonical_url = null, etag = null,
        last_modified = null, content_hash = null, fetched_cycle = v_source.cycle, fetched_at = now()
    where p.source_id = v_source.id and p.url = v_page.url;
  else
    update keel.source_pages p
    set status = v_outcome, last_error = left(args->>'error', 500), fetched_cycle = v_source.cycle,
        fetched_at = now()
    where p.source_id = v_source.id and p.url = v_page.url;
  end if;
  if v_page.document_id is not null
     and (v_outcome in ('gone', 'disallowed')
          or v_outcome in ('changed', 'unchanged') and v_page.document_id is distinct from args->>'document_id') then
    v_removed := keel.source_drop_documents(v_source.id, v_source.tenant_id, array[v_page.document_id]);
  end if;
  update keel.sources s
  set cycle_stats = jsonb_set(s.cycle_stats, array[v_outcome],
                              to_jsonb(coalesce((s.cycle_stats->>v_outcome)::int, 0) + 1))
                    || jsonb_build_object('removed', coalesce((s.cycle_stats->>'removed')::int, 0) + v_removed)
  where s.id = v_source.id;
  return jsonb_build_object('lease_lost', false, 'documents_removed', v_removed);
end $$;

-- Ends a run's work on a source. With `finished` (no page of the cycle left
-- to fetch), the cycle ends: after a complete listing, the pages it did not
-- see are removed with their documents; the counts become `last_run` and
-- the next cycle is due one schedule interval after this one started.
-- Otherwise (time budget spent) the lease is released and the next run
-- resumes the cycle.
create or replace function public.keel_finish_source_run(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_source keel.sources := keel.leased_source(args);
  v_ids text[];
  v_removed_pages int := 0;
  v_removed int := 0;
begin
  if v_source.id is null then
    return jsonb_build_object('lease_lost', true);
  end if;
  if (args->>'finished')::boolean then
    if v_source.listing_complete then
      with gone as (
        delete from keel.source_pages p
        where p.source_id = v_source.id and p.seen_cycle < v_source.cycle
        returning p.document_id
      )
      select array_agg(g.document_id) filter (where g.document_id is not null), count(*)
      into v_ids, v_removed_pages from gone g;
      v_removed := keel.source_drop_documents(v_source.id, v_source.tenant_id, coalesce(v_ids, '{}'));
    end if;
    update keel.sources s
    set state = 'idle', lease_token = null, lease_until = null,
        next_run_at = greatest(now(), s.cycle_started_at
                                      + case s.schedule when 'hourly' then interval '1 hour' else interval '1 day' end),
        last_run = jsonb_build_object('started_at', s.cycle_started_at, 'finished_at', now(),
                     'pages_seen', (select count(*) from keel.source_pages p
                                    where p.source_id = s.id and p.seen_cycle = s.cycle),
                     'changed', 0, 'unchanged', 0, 'failed', 0, 'unsupported', 0, 'gone', 0,
                     'disallowed', 0, 'over_quota', 0, 'error', null, 'listing_complete', s.listing_complete)
                   || s.cycle_stats
                   || jsonb_build_object('removed', coalesce((s.cycle_stats->>'removed')::int, 0) + v_removed,
                                         'pages_removed', v_removed_pages)
    where s.id = v_source.id
    returning * into v_source;
  else
    update keel.sources s set lease_token = null, lease_until = null
    where s.id = v_source.id
    returning * into v_source;
  end if;
  return jsonb_build_object('lease_lost', false, 'source', keel.source_json(v_source));
end $$;

select keel.lock_down_api();
