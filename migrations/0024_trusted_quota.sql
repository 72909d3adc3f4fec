-- A tenant's quota taken for work no request of the tenant paid for: an
-- inbound text is answered for the tenant (an LLM call) after a provider's
-- webhook, which draws only from the endpoint's intake quota. It takes one
-- request from the same bucket the tenant's own requests of that scope use
-- (`<scope>:<tenant id>`, as keel_gated counts them), so SMS answers and
-- chat requests share the tenant's chat quota.

create or replace function public.keel_take_tenant_quota(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_scope text := args->>'scope';
  v_per_minute int := (args->>'per_minute')::int;
  v_quota jsonb;
begin
  if v_scope is null or v_scope not in ('search', 'chat', 'tenant')
     or v_per_minute is null or v_per_minute < 1 then
    raise exception 'keel_take_tenant_quota needs scope search, chat or tenant and a positive per_minute'
      using errcode = '22023';
  end if;
  v_quota := keel.take_quota(v_scope || ':' || (args->>'tenant_id')::uuid, v_per_minute, 60);
  if not (v_quota->>'allowed')::boolean then
    perform keel.bump('rate_limited_' || v_scope);
  end if;
  return v_quota;
end $$;

revoke all on function public.keel_take_tenant_quota(jsonb) from public, anon, authenticated;

select keel.lock_down_api();
