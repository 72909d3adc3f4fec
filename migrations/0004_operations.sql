-- Operations: the numbers behind GET /api/metrics, computed from the
-- database so that every instance reports the same values.

create or replace function public.keel_metrics(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object(
    'tenants', (select count(*) from keel.tenants),
    'documents', (select count(*) from keel.documents),
    'chunks', (select count(*) from keel.chunks),
    'embeddings', coalesce((
      select jsonb_agg(jsonb_build_object('model', model, 'dimensions', dimensions, 'count', n))
      from (select model, dimensions, count(*) as n from keel.embeddings group by 1, 2) e), '[]'::jsonb),
    'embedding_jobs', coalesce((
      select jsonb_agg(jsonb_build_object('model', model, 'dimensions', dimensions, 'state', state, 'count', n))
      from (select model, dimensions,
                   case when failed_at is not null then 'failed' else 'pending' end as state, count(*) as n
            from keel.embedding_jobs group by 1, 2, 3) j), '[]'::jsonb),
    'tasks', coalesce((
      select jsonb_agg(jsonb_build_object('kind', kind, 'status', status, 'count', n))
      from (select kind, status, count(*) as n from keel.tasks group by 1, 2) t), '[]'::jsonb),
    'webhook_deliveries', coalesce((
      select jsonb_agg(jsonb_build_object('status', status, 'count', n))
      from (select status, count(*) as n from keel.webhook_deliveries group by 1) d), '[]'::jsonb),
    'counters', coalesce((
      select jsonb_object_agg(name, total)
      from (select name, sum(value) as total from keel.counters group by 1) c), '{}'::jsonb));
$$;

select keel.lock_down_api();
