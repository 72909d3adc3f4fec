-- Issue 14, answers: the conversations a tenant's assistant holds, its
-- settings, and the publishable keys a browser widget calls /api/chat with.
--
--   * keel.conversations / keel.conversation_messages: each chat turn (the
--     user's message and the answer with its citations and token usage,
--     marked incomplete when the stream broke), kept CONVERSATION_RETENTION_DAYS
--     after the last turn and pruned in batches by the maintenance cron.
--   * keel.assistant_settings: the tenant's instructions, model, temperature
--     and answer length (defaults when never set).
--   * keel.publishable_keys (`keel_pk_…`): may only chat and read their own
--     visitor's conversation, only from the key's allowed origins, only over
--     the documents the key's filter allows, under a per-key and a
--     per-visitor quota. A conversation started with one is bound to the
--     hash of an anonymous visitor token, so one visitor never reads
--     another's.
--   * keel_gated learns `per: publishable`: the visitor's, the key's and the
--     tenant's quota are all taken in the same round trip as the call.
--
-- Re-runnable, like every migration; Postgres 15 + pgvector only.

create table if not exists keel.publishable_keys (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  -- SHA-256 of the key, hex. The key itself is shown once and never stored.
  key_hash text not null unique check (key_hash ~ '^[0-9a-f]{64}$'),
  prefix text not null check (length(prefix) <= 32),
  -- Normalised origins (scheme://host[:port]), compared exactly.
  allowed_origins text[] not null check (cardinality(allowed_origins) between 1 and 20),
  -- ANDed with every request's own filter, server-side.
  filter jsonb check (filter is null or (jsonb_typeof(filter) = 'object' and octet_length(filter::text) <= 4096)),
  per_minute int not null check (per_minute between 1 and 100000),
  per_visitor_per_minute int not null check (per_visitor_per_minute between 1 and 100000),
  created_at timestamptz not null default now(),
  revoked_at timestamptz
);
create index if not exists publishable_keys_tenant on keel.publishable_keys (tenant_id, created_at desc);

create table if not exists keel.conversations (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  -- The client's id (useChat's `id`), unique per tenant.
  client_id text not null check (client_id ~ '^[A-Za-z0-9_-]{1,128}$'),
  -- Set for conversations started with a publishable key: the key, and the
  -- SHA-256 of the visitor token that alone may continue and read it.
  publishable_key_id uuid references keel.publishable_keys (id) on delete cascade,
  visitor_token_hash text check (visitor_token_hash ~ '^[0-9a-f]{64}$'),
  -- The first user message, shortened: what a list shows.
  title text check (length(title) <= 200),
  message_count int not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, client_id),
  check ((publishable_key_id is null) = (visitor_token_hash is null))
);
create index if not exists conversations_tenant on keel.conversations (tenant_id, id desc);
create index if not exists conversations_updated_at on keel.conversations (updated_at);
create index if not exists conversations_visitor on keel.conversations (publishable_key_id, visitor_token_hash)
  where visitor_token_hash is not null;

create table if not exists keel.conversation_messages (
  id bigint generated always as identity primary key,
  conversation_id bigint not null references keel.conversations (id) on delete cascade,
  role text not null check (role in ('user', 'assistant')),
  content text not null check (length(content) <= 64000),
  citations jsonb not null default '[]'
    check (jsonb_typeof(citations) = 'array' and jsonb_array_length(citations) <= 20
           and octet_length(citations::text) <= 262144),
  usage jsonb check (usage is null or jsonb_typeof(usage) = 'object'),
  model text check (length(model) <= 200),
  incomplete boolean not null default false,
  created_at timestamptz not null default clock_timestamp()
);
create index if not exists conversation_messages_conversation on keel.conversation_messages (conversation_id, id);

create table if not exists keel.assistant_settings (
  tenant_id uuid primary key references keel.tenants (id) on delete cascade,
  instructions text not null default '' check (length(instructions) <= 8000),
  model text check (model is null or length(model) between 1 and 200),
  temperature real not null default 0.3 check (temperature between 0 and 2),
  max_answer_tokens int not null default 600 check (max_answer_tokens between 1 and 4096),
  updated_at timestamptz not null default now()
);

-- Shared helpers ---------------------------------------------------------------

-- The tenant's assistant settings, or the defaults when never set.
create or replace function keel.assistant_json(p_tenant uuid) returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  select coalesce(
    (select jsonb_build_object('instructions', s.instructions, 'model', s.model,
                               'temperature', s.temperature, 'max_answer_tokens', s.max_answer_tokens)
     from keel.assistant_settings s where s.tenant_id = p_tenant),
    jsonb_build_object('instructions', '', 'model', null, 'temperature', 0.3, 'max_answer_tokens', 600));
$$;

-- The live publishable key a call presents (args->>'publishable_key_hash'),
-- refusing it (PT403) unless args->>'origin' is on its list. Missing, unknown
-- and revoked keys are indistinguishable (PT401).
create or replace function keel.publishable_key(args jsonb) returns keel.publishable_keys
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_key keel.publishable_keys;
begin
  select * into v_key from keel.publishable_keys k
  where k.key_hash = args->>'publishable_key_hash' and k.revoked_at is null;
  if v_key.id is null then
    raise exception 'missing or invalid credentials' using errcode = 'PT401';
  end if;
  if args->>'origin' is null or not (args->>'origin' = any (v_key.allowed_origins)) then
    raise exception 'this publishable key may not be used from origin %', coalesce(args->>'origin', '(none)')
      using errcode = 'PT403';
  end if;
  return v_key;
end $$;

-- Whether a visitor token hash was issued for a conversation of key `p_key`.
create or replace function keel.known_visitor(p_key uuid, p_visitor_hash text) returns boolean
language sql
stable
set search_path = keel, pg_catalog
as $$
  select p_visitor_hash is not null and exists (
    select 1 from keel.conversations c
    where c.publishable_key_id = p_key and c.visitor_token_hash = p_visitor_hash);
$$;

create or replace function keel.message_json(m keel.conversation_messages) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('role', m.role, 'content', m.content, 'citations', m.citations,
                            'usage', m.usage, 'model', m.model, 'incomplete', m.incomplete,
                            'created_at', m.created_at);
$$;

create or replace function keel.conversation_json(c keel.conversations) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', c.client_id, 'title', c.title, 'message_count', c.message_count,
                            'publishable_key_id', c.publishable_key_id,
                            'created_at', c.created_at, 'updated_at', c.updated_at);
$$;

-- The newest `p_limit` messages of a conversation, oldest first.
create or replace function keel.recent_messages(p_conversation bigint, p_limit int) returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  select coalesce(jsonb_agg(keel.message_json(m) order by m.id), '[]'::jsonb)
  from (select * from keel.conversation_messages
        where conversation_id = p_conversation order by id desc limit p_limit) m;
$$;

-- Chat ------------------------------------------------------------------------

-- The first call of a chat request: who is asking (a tenant key, or a
-- publishable key from an allowed origin), the conversation (created when
-- new; a publishable caller only reaches its own visitor's), its recent
-- history when asked, and the tenant's assistant settings.
--
-- args: conversation_id, load_history, history_limit, and either key_hash or
-- publishable_key_hash + origin + visitor_token_hash (the token presented,
-- if any) + new_visitor_token_hash (Keel's fresh token, used when none was
-- presented or the one presented was never issued for this key).
create or replace function public.keel_chat_begin(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid;
  v_key keel.publishable_keys;
  v_visitor text;
  v_minted boolean := false;
  v_conversation keel.conversations;
begin
  if args ? 'publishable_key_hash' then
    v_key := keel.publishable_key(args);
    v_tenant := v_key.tenant_id;
    if keel.known_visitor(v_key.id, args->>'visitor_token_hash') then
      v_visitor := args->>'visitor_token_hash';
    else
      v_visitor := args->>'new_visitor_token_hash';
      v_minted := true;
    end if;
    if v_visitor is null or v_visitor !~ '^[0-9a-f]{64}$' then
      raise exception 'a publishable chat needs new_visitor_token_hash' using errcode = '22023';
    end if;
  else
    -- A tenant key (authenticated here) or a trusted tenant id (an SMS
    -- endpoint's tenant; only Keel's own role executes this function).
    v_tenant := keel.resolve_tenant(args);
  end if;

  insert into keel.conversations (tenant_id, client_id, publishable_key_id, visitor_token_hash)
  values (v_tenant, args->>'conversation_id', v_key.id, v_visitor)
  on conflict (tenant_id, client_id) do nothing
  returning * into v_conversation;
  if v_conversation.id is null then
    select * into v_conversation from keel.conversations c
    where c.tenant_id = v_tenant and c.client_id = args->>'conversation_id';
    -- A publishable caller continues only its own visitor's conversation; a
    -- tenant key continues any of its tenant's.
    if v_key.id is not null and (v_conversation.publishable_key_id is distinct from v_key.id
                                 or v_conversation.visitor_token_hash is distinct from v_visitor) then
      raise exception 'no conversation "%"', args->>'conversation_id' using errcode = 'P0002';
    end if;
  end if;

  return jsonb_build_object(
    'tenant_id', v_tenant,
    'conversation_id', v_conversation.client_id,
    'visitor_minted', v_minted,
    'history', case when coalesce((args->>'load_history')::boolean, false)
                    then keel.recent_messages(v_conversation.id, coalesce((args->>'history_limit')::int, 50))
                    else '[]'::jsonb end,
    'assistant', keel.assistant_json(v_tenant),
    'filter', v_key.filter,
    'allowed_origin', case when v_key.id is not null then args->>'origin' end);
end $$;

-- Stores one turn, the user's message and the answer, in one transaction.
-- args: tenant_id (from keel_chat_begin), conversation_id, user, assistant
-- ({content, citations, usage, model, incomplete}).
create or replace function public.keel_chat_record(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_conversation bigint;
  v_answer jsonb := args->'assistant';
begin
  update keel.conversations c
  set title = coalesce(c.title, left(regexp_replace(btrim(args->>'user'), '\s+', ' ', 'g'), 200)),
      message_count = c.message_count + 2,
      updated_at = now()
  where c.tenant_id = keel.resolve_tenant(args) and c.client_id = args->>'conversation_id'
  returning c.id into v_conversation;
  if v_conversation is null then
    -- Deleted (or pruned) while the answer was being written.
    raise exception 'no conversation "%"', args->>'conversation_id' using errcode = 'P0002';
  end if;
  insert into keel.conversation_messages (conversation_id, role, content)
  values (v_conversation, 'user', args->>'user');
  insert into keel.conversation_messages (conversation_id, role, content, citations, usage, model, incomplete)
  values (v_conversation, 'assistant', v_answer->>'content', coalesce(v_answer->'citations', '[]'::jsonb),
          v_answer->'usage', v_answer->>'model', coalesce((v_answer->>'incomplete')::boolean, false));
  return jsonb_build_object('recorded', 2);
end $$;

-- Conversations -------------------------------------------------------------------

-- A tenant's conversations, newest first; cursor: the last id of the page before.
create or replace function public.keel_list_conversations(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with page as (
    select c.*, row_number() over (order by c.id desc) as n
    from keel.conversations c
    where c.tenant_id = keel.resolve_tenant(args)
      and (args->>'cursor' is null or c.id < (args->>'cursor')::bigint)
    order by c.id desc
    limit (args->>'limit')::int + 1
  )
  select jsonb_build_object(
    'conversations', coalesce((select jsonb_agg(keel.conversation_json(row(id, tenant_id, client_id,
        publishable_key_id, visitor_token_hash, title, message_count, created_at, updated_at)::keel.conversations)
        order by id desc) from page where n <= (args->>'limit')::int), '[]'::jsonb),
    'next_cursor', case when (select count(*) from page) > (args->>'limit')::int
                        then (select min(id)::text from page where n <= (args->>'limit')::int) end);
$$;

-- One conversation with its newest `message_limit` messages (oldest first).
-- A tenant key reads any of its tenant's; a publishable key (from an allowed
-- origin) only the one its visitor token started. Anything else: P0002.
create or replace function public.keel_get_conversation(args jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_conversation keel.conversations;
  v_key keel.publishable_keys;
begin
  if args ? 'publishable_key_hash' then
    v_key := keel.publishable_key(args);
    select * into v_conversation from keel.conversations c
    where c.tenant_id = v_key.tenant_id and c.client_id = args->>'id'
      and c.publishable_key_id = v_key.id and c.visitor_token_hash = args->>'visitor_token_hash';
  else
    select * into v_conversation from keel.conversations c
    where c.tenant_id = keel.authenticate(args->>'key_hash') and c.client_id = args->>'id';
  end if;
  if v_conversation.id is null then
    raise exception 'no conversation "%"', args->>'id' using errcode = 'P0002';
  end if;
  return keel.conversation_json(v_conversation)
         || jsonb_build_object('messages',
                               keel.recent_messages(v_conversation.id, coalesce((args->>'message_limit')::int, 200)));
end $$;

create or replace function public.keel_delete_conversation(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_deleted int;
begin
  delete from keel.conversations c
  where c.tenant_id = keel.resolve_tenant(args) and c.client_id = args->>'id';
  get diagnostics v_deleted = row_count;
  if v_deleted = 0 then
    raise exception 'no conversation "%"', args->>'id' using errcode = 'P0002';
  end if;
  return jsonb_build_object('deleted', true);
end $$;

-- Maintenance: conversations idle for `retention_days`, at most `batch` per
-- call (their messages go with them); `more` when the batch was full.
create or replace function public.keel_prune_conversations(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_batch int := coalesce((args->>'batch')::int, 500);
  v_pruned int;
begin
  if coalesce((args->>'retention_days')::int, 0) < 1 then
    raise exception 'retention_days must be at least 1' using errcode = '22023';
  end if;
  delete from keel.conversations
  where id in (select id from keel.conversations
               where updated_at < now() - make_interval(days => (args->>'retention_days')::int)
               limit v_batch for update skip locked);
  get diagnostics v_pruned = row_count;
  return jsonb_build_object('conversations_pruned', v_pruned, 'more', v_pruned >= v_batch);
end $$;

-- Assistant settings -------------------------------------------------------------

create or replace function public.keel_get_assistant(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select keel.assistant_json(keel.resolve_tenant(args));
$$;

create or replace function public.keel_put_assistant(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_settings jsonb := args->'assistant';
begin
  insert into keel.assistant_settings (tenant_id, instructions, model, temperature, max_answer_tokens, updated_at)
  values (v_tenant, v_settings->>'instructions', v_settings->>'model', (v_settings->>'temperature')::real,
          (v_settings->>'max_answer_tokens')::int, now())
  on conflict (tenant_id) do update
  set instructions = excluded.instructions, model = excluded.model, temperature = excluded.temperature,
      max_answer_tokens = excluded.max_answer_tokens, updated_at = now();
  perform keel.audit(args, 'assistant.update', v_tenant::text, v_tenant,
                     jsonb_build_object('model', v_settings->>'model'));
  return keel.assistant_json(v_tenant);
end $$;

-- Publishable keys ---------------------------------------------------------------

create or replace function keel.publishable_key_json(k keel.publishable_keys) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', k.id, 'prefix', k.prefix, 'allowed_origins', to_jsonb(k.allowed_origins),
                            'filter', k.filter, 'per_minute', k.per_minute,
                            'per_visitor_per_minute', k.per_visitor_per_minute, 'created_at', k.created_at);
$$;

-- A new publishable key; at most `max_active` live keys per tenant. Takes
-- args->'idempotency' like the other credential-creating functions (0014):
-- a retry with the same Idempotency-Key replays the key the first call made.
create or replace function public.keel_create_publishable_key(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_scope text := 'tenant:' || v_tenant;
  v_key keel.publishable_keys;
  v_replay jsonb := keel.idempotency_claim(v_scope, 'publishable_keys.create', args);
begin
  if v_replay is not null then
    return v_replay;
  end if;
  -- Serialises creations per tenant, so the count below cannot be raced.
  perform 1 from keel.tenants t where t.id = v_tenant for update;
  if (select count(*) from keel.publishable_keys k where k.tenant_id = v_tenant and k.revoked_at is null)
     >= coalesce((args->>'max_active')::int, 50) then
    raise exception 'a tenant may have at most % live publishable keys; revoke one first',
      coalesce((args->>'max_active')::int, 50) using errcode = '23P01';
  end if;
  insert into keel.publishable_keys (tenant_id, key_hash, prefix, allowed_origins, filter, per_minute,
                                     per_visitor_per_minute)
  values (v_tenant, args->>'new_key_hash', args->>'prefix',
          array(select jsonb_array_elements_text(args->'allowed_origins')), nullif(args->'filter', 'null'::jsonb),
          (args->>'per_minute')::int, (args->>'per_visitor_per_minute')::int)
  returning * into v_key;
  perform keel.audit(args, 'publishable_key.create', v_key.id::text, v_tenant,
                     jsonb_build_object('prefix', v_key.prefix, 'allowed_origins', args->'allowed_origins'));
  return keel.idempotency_store(v_scope, 'publishable_keys.create', args, keel.publishable_key_json(v_key));
end $$;

-- The tenant's live publishable keys, newest first (at most 50 exist).
create or replace function public.keel_list_publishable_keys(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('publishable_keys',
    coalesce(jsonb_agg(keel.publishable_key_json(k) order by k.created_at desc, k.id), '[]'::jsonb))
  from keel.publishable_keys k
  where k.tenant_id = keel.resolve_tenant(args) and k.revoked_at is null;
$$;

create or replace function public.keel_revoke_publishable_key(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_key keel.publishable_keys;
begin
  if args->>'id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    raise exception 'no publishable key "%"', args->>'id' using errcode = 'P0002';
  end if;
  update keel.publishable_keys k set revoked_at = now()
  where k.id = (args->>'id')::uuid and k.tenant_id = v_tenant and k.revoked_at is null
  returning * into v_key;
  if v_key.id is null then
    raise exception 'no publishable key "%"', args->>'id' using errcode = 'P0002';
  end if;
  perform keel.audit(args, 'publishable_key.revoke', v_key.id::text, v_tenant,
                     jsonb_build_object('prefix', v_key.prefix));
  return jsonb_build_object('id', v_key.id, 'revoked_at', v_key.revoked_at);
end $$;

-- Quotas ------------------------------------------------------------------------

-- Of two quota states, the one a client should heed: a refusal, else the
-- one with the fewest requests left.
create or replace function keel.tightest_quota(a jsonb, b jsonb) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select case
    when a is null then b
    when b is null then a
    when not (a->>'allowed')::boolean then a
    when not (b->>'allowed')::boolean then b
    when (b->>'remaining')::int < (a->>'remaining')::int then b
    else a end;
$$;

-- The quotas of a call presenting a publishable key (p_args->>
-- 'publishable_key_hash'): one request from the visitor's quota (its token
-- hash once issued for the key, else the client address), then from the
-- key's; narrowest first, so a visitor over its quota spends nothing of the
-- key's. {tenant_id, quota: the tightest of the two}, a refusal's
-- {quota}, or null for a key that is unknown or revoked.
create or replace function keel.take_publishable_quotas(p_args jsonb, p_ip text) returns jsonb
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_key keel.publishable_keys;
  v_visitor text;
  v_quota jsonb;
  v_key_quota jsonb;
begin
  select * into v_key from keel.publishable_keys k
  where k.key_hash = p_args->>'publishable_key_hash' and k.revoked_at is null;
  if v_key.id is null then
    return null;
  end if;
  v_visitor := case when keel.known_visitor(v_key.id, p_args->>'visitor_token_hash')
                    then 'visitor:' || (p_args->>'visitor_token_hash')
                    else 'address:' || p_ip end;
  if v_visitor is not null then
    v_quota := keel.take_quota('publishable:' || v_key.id || ':' || v_visitor, v_key.per_visitor_per_minute, 60);
    if not (v_quota->>'allowed')::boolean then
      return jsonb_build_object('quota', v_quota);
    end if;
  end if;
  v_key_quota := keel.take_quota('publishable:' || v_key.id, v_key.per_minute, 60);
  return jsonb_build_object('tenant_id', v_key.tenant_id, 'quota', keel.tightest_quota(v_quota, v_key_quota));
end $$;

-- keel_gated (0010) with one more `per`: `publishable`. The call presents a
-- publishable key (args->'args'->>'publishable_key_hash'); one request is
-- taken from the visitor's quota (its token hash once issued for the key,
-- else the client address: "publishable:<key>:visitor:<hash>" or
-- "publishable:<key>:address:<ip>", limited by the key's
-- per_visitor_per_minute), then from the key's ("publishable:<key>",
-- per_minute), then from the tenant's quota of the route's scope, narrowest
-- first, so a visitor over its quota spends nothing of the key's. The
-- answer carries the tightest of the three. A key that is unknown or
-- revoked is counted per client address, then answered 401, like a forged
-- tenant key.
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
  v_narrow jsonb;
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
     or v_per not in ('tenant', 'address', 'endpoint', 'publishable') then
    raise exception 'keel_gated needs limit.scope, a positive limit.per_minute and limit.per tenant, address, endpoint or publishable'
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
  elsif v_per = 'publishable' then
    v_narrow := keel.take_publishable_quotas(args->'args', v_ip);
    if v_narrow is null then
      v_state := 'PT401';
      v_message := 'missing or invalid credentials';
      v_failed := true;
      v_subject := 'address:' || v_ip;
    elsif not (v_narrow->'quota'->>'allowed')::boolean then
      perform keel.bump('rate_limited_' || v_scope);
      return jsonb_build_object('quota', v_narrow->'quota');
    else
      v_subject := v_narrow->>'tenant_id';
      v_narrow := v_narrow->'quota';
    end if;
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
    -- Each quota is taken once, into a variable, before any comparison.
    v_quota := keel.take_quota(v_scope || ':' || v_subject, (v_limit->>'per_minute')::int, 60);
    if v_narrow is not null then
      v_quota := keel.tightest_quota(v_quota, v_narrow);
    end if;
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
