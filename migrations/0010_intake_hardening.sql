-- Issue 11: intake an attacker cannot bend.
--
-- keel_gated (0005) took a request from the quota and ran the work in one
-- transaction, so any error the work raised rolled the count back: unknown
-- webhook endpoints, forged tenant keys and every 404 or 409 were never
-- counted, i.e. unlimited. Its webhook quota was per sender address, and
-- providers send every customer's events from a few addresses, so one
-- tenant's burst got other tenants' deliveries refused.
--
-- keel_gated now
--   * keeps the count whatever the work does: the work runs in an exception
--     block (a subtransaction) after the hit is taken, and its error is
--     handed back as data, {quota, error: {code, message, details, hint}},
--     which Keel raises as the same database error (one round trip still);
--   * counts a key that authenticates no tenant per client address
--     ("search:address:203.0.113.7"), then answers its 401;
--   * counts webhook intake per endpoint and sender address
--     ("webhook:endpoint:<id>:203.0.113.7"): one tenant's burst leaves other
--     endpoints alone, and a forger who knows an endpoint's URL cannot use
--     up its quota for the real sender; ids naming no endpoint are counted
--     per sender address ("webhook:address:203.0.113.7").
--
-- args->'limit': {scope, per_minute, per, client_ip}; `per` is `tenant`,
-- `address` or `endpoint`. Callers that send no `per` (Keel before this
-- migration, during a deploy) get the old buckets, and callers that do not
-- ask for args->>'errors' = 'return' get the work's error raised as before.
-- Re-runnable, like every migration.

create or replace function public.keel_gated(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_function text := args->>'function';
  v_limit jsonb := args->'limit';
  v_scope text := v_limit->>'scope';
  v_ip text := v_limit->>'client_ip';
  v_per text := coalesce(v_limit->>'per', case when v_limit ? 'client_ip' then 'address' else 'tenant' end);
  v_endpoint text := args->'args'->>'id';
  v_subject text;
  v_quota jsonb;
  v_result jsonb;
  v_failed boolean := false;
  v_state text;
  v_message text;
  v_detail text;
  v_hint text;
begin
  if v_function is null or v_function !~ '^keel_[a-z_]+$' or v_function = 'keel_gated'
     or to_regprocedure('public.' || v_function || '(jsonb)') is null then
    raise exception 'keel_gated cannot run %', coalesce(v_function, 'null') using errcode = '42883';
  end if;
  if v_scope is null or v_scope !~ '^[a-z_]+$' or (v_limit->>'per_minute')::int < 1
     or v_per not in ('tenant', 'address', 'endpoint') then
    raise exception 'keel_gated needs limit.scope, a positive limit.per_minute and limit.per tenant, address or endpoint'
      using errcode = '22023';
  end if;

  -- Whom the request is counted against.
  if v_per = 'address' then
    v_subject := v_ip;
  elsif v_per = 'endpoint' then
    if v_endpoint ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      select 'endpoint:' || e.id || coalesce(':' || v_ip, '') into v_subject
      from keel.webhook_endpoints e where e.id = v_endpoint::uuid;
    end if;
    v_subject := coalesce(v_subject, 'address:' || v_ip);
  else
    begin
      v_subject := keel.authenticate(args->'args'->>'key_hash')::text;
    exception when sqlstate 'PT401' then
      -- No tenant to count against: the guesses count per client address.
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                              v_detail = pg_exception_detail, v_hint = pg_exception_hint;
      v_failed := true;
      v_subject := 'address:' || v_ip;
    end;
  end if;

  -- Nothing to count by only when the caller knows no client address.
  if v_subject is not null then
    v_quota := keel.take_quota(v_scope || ':' || v_subject, (v_limit->>'per_minute')::int, 60);
    if not (v_quota->>'allowed')::boolean then
      perform keel.bump('rate_limited_' || v_scope);
      return jsonb_build_object('quota', v_quota);
    end if;
  end if;

  if not v_failed then
    -- The work's own subtransaction: its error undoes its writes, not the hit.
    begin
      execute format('select public.%I($1)', v_function) into v_result using args->'args';
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                              v_detail = pg_exception_detail, v_hint = pg_exception_hint;
      v_failed := true;
    end;
  end if;

  if not v_failed then
    return jsonb_build_object('quota', v_quota, 'result', v_result);
  end if;
  if args->>'errors' = 'return' then
    return jsonb_build_object('quota', v_quota,
                              'error', jsonb_build_object('code', v_state, 'message', v_message,
                                                          'details', nullif(v_detail, ''),
                                                          'hint', nullif(v_hint, '')));
  end if;
  raise exception using errcode = v_state, message = v_message,
                        detail = coalesce(v_detail, ''), hint = coalesce(v_hint, '');
end $$;

select keel.lock_down_api();
