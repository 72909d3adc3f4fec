-- Issue 15, what arrives becomes useful: inbound SMS answered through the
-- answers pipeline, and Vapi's end-of-call reports kept as conversations.
--
--   * The trusted caller SMS answers use (the tenant id intake read from the
--     webhook endpoint, never from a client) is resolved by keel_chat_begin
--     itself (0015, through keel.resolve_tenant).
--   * keel.sms_replies: one row per inbound SMS to answer, so the reply goes
--     out at most once: in the webhook's TwiML response or through the
--     provider's Messages API from the `sms.reply` task, whichever claims it
--     first; a claim is released only when the provider said nothing was
--     sent (429, 5xx).
--   * keel.webhook_endpoint_credentials: a provider's API credentials
--     (Vonage's API key and secret) sealed under ENCRYPTION_KEY like the
--     endpoint's secret.
--   * keel.conversation_metadata: what a voice call's report says beside its
--     transcript (summary, recording URL, ended reason, cost), shown by
--     keel_get_conversation.
--
-- Re-runnable, like every migration; Postgres 15 + pgvector only.

create table if not exists keel.sms_replies (
  delivery_id bigint primary key references keel.webhook_deliveries (id) on delete cascade,
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  -- The answer, once generated: a retried task sends this one, not a new one.
  answer text check (length(answer) <= 64000),
  -- How the reply went out: in the TwiML response, or through the API.
  channel text check (channel in ('twiml', 'api')),
  claimed_at timestamptz,
  sent_at timestamptz,
  provider_message_id text check (length(provider_message_id) <= 200),
  created_at timestamptz not null default now()
);
create index if not exists sms_replies_tenant on keel.sms_replies (tenant_id);

create table if not exists keel.webhook_endpoint_credentials (
  endpoint_id uuid primary key references keel.webhook_endpoints (id) on delete cascade,
  -- ENCRYPTION_KEY's id and the sealed JSON of the credentials.
  key_id text not null check (length(key_id) <= 64),
  ciphertext text not null check (length(ciphertext) <= 4096),
  updated_at timestamptz not null default now()
);

create table if not exists keel.conversation_metadata (
  conversation_id bigint primary key references keel.conversations (id) on delete cascade,
  metadata jsonb not null check (jsonb_typeof(metadata) = 'object' and octet_length(metadata::text) <= 65536)
);

-- As 0015, with the conversation's metadata (a call report's summary,
-- recording URL, ended reason and cost; null for chats).
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
                               keel.recent_messages(v_conversation.id, coalesce((args->>'message_limit')::int, 200)),
                               'metadata',
                               (select m.metadata from keel.conversation_metadata m
                                where m.conversation_id = v_conversation.id));
end $$;

-- A voice call's end-of-call report as a conversation of the endpoint's
-- tenant (trusted: read from the delivery): `conversation_id` (the call id),
-- `turns` ([{role: user|assistant, content}], oldest first, replacing any
-- stored before: a report says the whole call) and `metadata`.
create or replace function public.keel_store_call_report(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_conversation bigint;
  v_turns int := coalesce(jsonb_array_length(args->'turns'), 0);
begin
  if v_turns > 500 then
    raise exception 'a call report stores at most 500 turns' using errcode = '22023';
  end if;
  insert into keel.conversations (tenant_id, client_id, title, message_count)
  values (v_tenant, args->>'conversation_id',
          left(regexp_replace(btrim((select t->>'content' from jsonb_array_elements(args->'turns') t
                                     where t->>'role' = 'user' limit 1)), '\s+', ' ', 'g'), 200),
          v_turns)
  on conflict (tenant_id, client_id) do update
  set message_count = excluded.message_count, title = coalesce(excluded.title, keel.conversations.title),
      updated_at = now()
  returning id into v_conversation;
  delete from keel.conversation_messages where conversation_id = v_conversation;
  insert into keel.conversation_messages (conversation_id, role, content)
  select v_conversation, t->>'role', t->>'content'
  from jsonb_array_elements(coalesce(args->'turns', '[]'::jsonb)) with ordinality as turns (t, n)
  order by n;
  insert into keel.conversation_metadata (conversation_id, metadata)
  values (v_conversation, coalesce(args->'metadata', '{}'::jsonb))
  on conflict (conversation_id) do update set metadata = excluded.metadata;
  return jsonb_build_object('conversation_id', args->>'conversation_id', 'messages', v_turns);
end $$;

-- SMS replies -------------------------------------------------------------------

-- An inbound SMS to answer: its row, and its `sms.reply` task due after
-- `delay_ms` (Twilio's: once the webhook's own deadline has passed, so the
-- task only answers what the response could not). Idempotent per delivery.
create or replace function public.keel_sms_reply_enqueue(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_delivery bigint := (args->>'delivery_id')::bigint;
begin
  if not exists (select 1 from keel.webhook_deliveries d where d.id = v_delivery and d.tenant_id = v_tenant) then
    raise exception 'no delivery %', v_delivery using errcode = 'P0002';
  end if;
  insert into keel.sms_replies (delivery_id, tenant_id) values (v_delivery, v_tenant)
  on conflict (delivery_id) do nothing;
  return keel.enqueue_task(v_tenant, 'sms.reply', jsonb_build_object('delivery_id', v_delivery),
                           'sms:' || v_delivery, 5,
                           now() + make_interval(secs => coalesce((args->>'delay_ms')::int, 0) / 1000.0));
end $$;

-- Where an SMS reply stands: its stored answer, whether it was claimed for
-- sending and whether it was sent.
create or replace function public.keel_sms_reply_state(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select coalesce(
    (select jsonb_build_object('answer', r.answer, 'claimed', r.claimed_at is not null,
                               'sent', r.sent_at is not null)
     from keel.sms_replies r
     where r.delivery_id = (args->>'delivery_id')::bigint and r.tenant_id = keel.resolve_tenant(args)),
    jsonb_build_object('answer', null, 'claimed', false, 'sent', false));
$$;

-- Keeps the first answer generated for an SMS and returns the one kept.
create or replace function public.keel_sms_reply_save(args jsonb) returns jsonb
language sql
security definer
set search_path = keel, pg_catalog
as $$
  insert into keel.sms_replies as r (delivery_id, tenant_id, answer)
  values ((args->>'delivery_id')::bigint, keel.resolve_tenant(args), args->>'answer')
  on conflict (delivery_id) do update set answer = coalesce(r.answer, excluded.answer)
  returning jsonb_build_object('answer', r.answer);
$$;

-- Claims the sending of an SMS reply for `channel`: only the first claim
-- wins. A TwiML reply is sent by the response itself, so it is marked sent
-- with its claim.
create or replace function public.keel_sms_reply_claim(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_claimed bigint;
begin
  insert into keel.sms_replies (delivery_id, tenant_id) values ((args->>'delivery_id')::bigint, v_tenant)
  on conflict (delivery_id) do nothing;
  update keel.sms_replies r
  set claimed_at = now(), channel = args->>'channel', answer = coalesce(r.answer, args->>'answer'),
      sent_at = case when args->>'channel' = 'twiml' then now() end
  where r.delivery_id = (args->>'delivery_id')::bigint and r.tenant_id = v_tenant and r.claimed_at is null
  returning r.delivery_id into v_claimed;
  return jsonb_build_object('claimed', v_claimed is not null);
end $$;

-- The end of a claimed send: `sent` with the provider's message id, or
-- released (`sent: false`) when the provider said nothing was sent.
create or replace function public.keel_sms_reply_finish(args jsonb) returns jsonb
language sql
security definer
set search_path = keel, pg_catalog
as $$
  update keel.sms_replies r
  set sent_at = case when (args->>'sent')::boolean then now() end,
      claimed_at = case when (args->>'sent')::boolean then r.claimed_at end,
      provider_message_id = args->>'provider_message_id'
  where r.delivery_id = (args->>'delivery_id')::bigint and r.tenant_id = keel.resolve_tenant(args)
    and r.sent_at is null
  returning jsonb_build_object('sent', r.sent_at is not null);
$$;

-- Provider credentials -----------------------------------------------------------

-- Stores (or replaces) the sealed API credentials of one of the tenant's endpoints.
create or replace function public.keel_put_endpoint_credentials(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint uuid;
begin
  select e.id into v_endpoint from keel.webhook_endpoints e
  where e.id = (args->>'endpoint_id')::uuid and e.tenant_id = keel.resolve_tenant(args);
  if v_endpoint is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  insert into keel.webhook_endpoint_credentials (endpoint_id, key_id, ciphertext)
  values (v_endpoint, args->>'key_id', args->>'ciphertext')
  on conflict (endpoint_id) do update
  set key_id = excluded.key_id, ciphertext = excluded.ciphertext, updated_at = now();
  return jsonb_build_object('stored', true);
end $$;

-- What the `sms.reply` task needs of a delivery's endpoint: its id,
-- verification, sealed secrets and sealed API credentials.
create or replace function public.keel_delivery_endpoint(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', e.id, 'tenant_id', e.tenant_id, 'verification', e.verification,
                            'secret_ciphertext', e.secret_ciphertext, 'key_id', e.key_id,
                            'previous_secret_ciphertext', null, 'previous_key_id', null,
                            'pull_url', e.pull_url,
                            'credentials_key_id', c.key_id, 'credentials_ciphertext', c.ciphertext)
  from keel.webhook_deliveries d
  join keel.webhook_endpoints e on e.id = d.endpoint_id
  left join keel.webhook_endpoint_credentials c on c.endpoint_id = e.id
  where d.id = (args->>'delivery_id')::bigint and d.tenant_id = keel.resolve_tenant(args);
$$;

select keel.lock_down_api();
