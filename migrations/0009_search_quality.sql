-- Search quality that holds beyond Cranfield (docs/search-quality.md, every
-- default chosen by the mean nDCG@10 over Cranfield, MED and CACM):
-- - a query word the query repeats counts again in the keyword ranking
--   (BM25's query-term saturation k3), so verbose questions weigh their
--   subject over the words around it;
-- - a dash standing between spaces ("algorithms - concurrent programs") is
--   punctuation, not websearch_to_tsquery's exclusion of the next word;
-- - a tenant with no more chunks than the candidate cap ranks every chunk
--   holding any query word, instead of those holding the rarest words only.

-- Up to p_limit of a tenant's chunks by BM25 over the query's words, with
-- title words (weight A) counting p_title_weight times and a word the query
-- holds qtf times weighing qtf · (k3 + 1) / (qtf + k3) (k3 0: once). The
-- score is divided by the query's maximum (every word saturated), so it lies
-- in [0, 1).
--
-- Ranking reads each candidate row, so at most p_max_matches are ranked:
-- every chunk holding a query word when the tenant has no more chunks than
-- that, else those containing the query's rarest words, taken rarest first
-- while their document frequencies add up to at most p_max_matches (common
-- words add little to BM25); when even the rarest word is that common, the
-- chunks with every word, then any. Words after `-` exclude chunks.
create or replace function keel.rank_keyword(
  p_tenant uuid, p_query tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_k3 float8, p_title_weight float8, p_max_matches int
) returns jsonb
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_totals keel.keyword_totals;
  v_words jsonb;
  v_excluded tsquery;
  v_terms jsonb;
  v_any tsquery;
  v_rarest int;
  v_ranked jsonb;
  -- ts_rank_cd's weights ({D, C, B, A}) must lie in [0, 1]: scaled down here,
  -- the frequency scaled back up.
  v_scale float8 := greatest(p_title_weight, 1);
  v_weights float4[] := array[1 / v_scale, 1 / v_scale, 1 / v_scale, p_title_weight / v_scale];
begin
  select * into v_totals from keel.keyword_totals where tenant_id = p_tenant;
  if v_totals.chunks is null or v_totals.chunks <= 0 then
    return '[]';
  end if;
  -- The query's words are its quoted lexemes, with how often each occurs;
  -- `!'word'` excludes.
  select jsonb_object_agg(w.word, w.n) into v_words
  from (select replace(m[2], '''''', '''') as word, count(*) as n
        from regexp_matches(p_query::text, '(!?)''((?:[^'']|'''')+)''', 'g') m
        where m[1] = ''
        group by 1) w;
  select string_agg(distinct '''' || m[2] || '''', ' | ') into v_excluded
  from regexp_matches(p_query::text, '(!?)''((?:[^'']|'''')+)''', 'g') m
  where m[1] = '!';
  select jsonb_agg(jsonb_build_object('lexeme', s.lexeme, 'chunks', s.chunks,
                   'weight', ln(1 + (v_totals.chunks - s.chunks + 0.5) / (s.chunks + 0.5))
                          * q.n * (p_k3 + 1) / (q.n + p_k3))
                   order by s.chunks, s.lexeme)
  into v_terms
  from keel.keyword_stats s
  join lateral (select (v_words->>s.lexeme)::float8 as n) q on true
  where s.tenant_id = p_tenant and s.lexeme = any(array(select jsonb_object_keys(v_words)))
    and s.chunks > 0;
  if v_terms is null then
    return '[]';
  end if;
  v_rarest := (v_terms->0->>'chunks')::int;
  select string_agg(quote_literal(t->>'lexeme'), ' | ')::tsquery into v_any
  from (select t, sum((t->>'chunks')::int) over (order by ordinality) as running
        from jsonb_array_elements(v_terms) with ordinality as e (t, ordinality)) picked
  where running <= greatest(p_max_matches, v_rarest) or v_totals.chunks <= p_max_matches;

  execute $q$
    with terms as materialized (
      select quote_literal(t->>'lexeme')::tsquery as word, (t->>'weight')::float8 as weight
      from jsonb_array_elements($6) t
    ), matches as (
      (select c.id, c.search_vector
       from keel.chunks c
       join keel.documents d on d.id = c.document_id
       where $10 and c.tenant_id = $1 and c.search_vector @@ $2 and d.metadata @> $3
         and ($11::tsquery is null or not c.search_vector @@ $11)
       limit $9)
      union all
      (select c.id, c.search_vector
       from keel.chunks c
       join keel.documents d on d.id = c.document_id
       where c.tenant_id = $1 and c.search_vector @@ $12 and d.metadata @> $3
         and ($11::tsquery is null or not c.search_vector @@ $11)
         and not ($10 and c.search_vector @@ $2)
       limit $9)
    ), scored as (
      -- ts_rank_cd of a one-word query sums the weights of the word's
      -- positions: its term frequency, title positions weighing more.
      select m.id, sum(t.weight * f.tf * ($4 + 1) / (f.tf + $4 * (1 - $5 + $5 * length(m.search_vector) / $7))) as score
      from matches m
      cross join terms t
      cross join lateral (select $14 * ts_rank_cd($8, m.search_vector, t.word, 0) as tf) f
      where f.tf > 0
      group by m.id
    )
    select coalesce(jsonb_agg(jsonb_build_object('chunk_id', id, 'score', score) order by score desc, id), '[]'::jsonb)
    from (
      select id, score / (select sum(weight) * ($4 + 1) from terms) as score
      from scored
      order by score desc, id
      limit $13
    ) ranked$q$
  into v_ranked
  using p_tenant, p_query, p_filter, p_k1, p_b, v_terms,
        v_totals.lexemes::float8 / v_totals.chunks,
        v_weights, p_max_matches, v_rarest > p_max_matches, v_excluded, v_any, p_limit, v_scale;
  return v_ranked;
end $$;

drop function if exists keel.rank_keyword(uuid, tsquery, jsonb, int, float8, float8, float8, int);

-- Hybrid search for the caller's tenant. Modes: `vector` (cosine similarity
-- through the model's HNSW index, with pgvector's iterative scan so tenant and
-- metadata filters cannot starve the result), `keyword` (BM25, see
-- keel.rank_keyword) and `hybrid` (weighted reciprocal rank fusion of both).
-- Each ranking contributes `candidates` chunks (at least top_k); the ranking
-- knobs below default to the values docs/search-quality.md measured best
-- (mean over the development collections), and `keel bench quality --sweep`
-- varies them through these arguments.
--
-- The query vector comes from the caller (`embedding`) or the query cache
-- (`query_hash`); on a cache miss the function answers `needs_embedding`
-- after authenticating, so unauthenticated callers never cost a provider call.
-- While a model change is being backfilled, the model with the most vectors
-- for this tenant serves; the function answers `use_model` when that is not
-- the caller's.
create or replace function public.keel_search(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_tenant uuid := keel.authenticate(args->>'key_hash');
  v_mode text := args->>'mode';
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_top_k int := (args->>'top_k')::int;
  v_candidates int := greatest(coalesce((args->>'candidates')::numeric::int, 40), (args->>'top_k')::int);
  v_rrf_k float8 := coalesce((args->>'rrf_k')::float8, 10);
  v_keyword_weight float8 := coalesce((args->>'keyword_weight')::float8, 0.75);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_keyword jsonb := '[]';
  v_query tsquery;
begin
  if v_mode in ('vector', 'hybrid') then
    if not coalesce((args->>'model_chosen')::boolean, false)
       and exists (select 1 from keel.embedding_models
                   where not (model = v_model and dimensions = v_dimensions)) then
      select e.model, e.dimensions, count(*) as vectors into v_best
      from keel.embeddings e where e.tenant_id = v_tenant
      group by e.model, e.dimensions
      order by count(*) desc, (e.model = v_model and e.dimensions = v_dimensions) desc
      limit 1;
      if v_best.model is not null and not (v_best.model = v_model and v_best.dimensions = v_dimensions) then
        return jsonb_build_object('use_model', jsonb_build_object('model', v_best.model, 'dimensions', v_best.dimensions));
      end if;
    end if;

    if jsonb_typeof(args->'embedding') = 'array' then
      v_embedding := (args->>'embedding')::extensions.vector;
      if coalesce((args->>'cache_hit')::boolean, false) then
        perform keel.bump('query_cache_hits');
      else
        insert into keel.query_cache (model, dimensions, query_hash, embedding, expires_at)
        values (v_model, v_dimensions, args->>'query_hash', v_embedding,
                now() + make_interval(secs => (args->>'cache_ttl_seconds')::int))
        on conflict (model, dimensions, query_hash)
        do update set embedding = excluded.embedding, expires_at = excluded.expires_at, created_at = now();
      end if;
    else
      select q.embedding into v_embedding from keel.query_cache q
      where q.model = v_model and q.dimensions = v_dimensions
        and q.query_hash = args->>'query_hash' and q.expires_at > now();
      if v_embedding is null then
        perform keel.bump('query_cache_misses');
        return jsonb_build_object('needs_embedding', true);
      end if;
      perform keel.bump('query_cache_hits');
    end if;

    -- relaxed_order: keep scanning the index until enough rows pass the
    -- filters; the outer ORDER BY restores exact order.
    perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
    perform set_config('hnsw.ef_search', greatest(40, v_candidates)::text, true);
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
      ) ranked$q$, v_dimensions, v_model)
    into v_vector
    using v_embedding::extensions.vector, v_tenant, v_filter, v_candidates;
  end if;

  if v_mode in ('keyword', 'hybrid') then
    -- websearch syntax (`-word` excludes, quotes, `or`), except that a dash
    -- between spaces is punctuation in prose, not an exclusion.
    v_query := websearch_to_tsquery('english',
                 regexp_replace(args->>'query', '(^|\s)-+(?=\s|$)', '\1', 'g'));
    if numnode(v_query) > 0 then
      v_keyword := keel.rank_keyword(
        v_tenant, v_query, v_filter, v_candidates,
        coalesce((args->>'bm25_k1')::float8, 1.2),
        coalesce((args->>'bm25_b')::float8, 0.75),
        coalesce((args->>'bm25_k3')::float8, 3),
        coalesce((args->>'title_weight')::float8, 1),
        5000);
    end if;
  end if;

  return jsonb_build_object('results', coalesce((
    select jsonb_agg(jsonb_build_object(
             'document_id', d.external_id, 'title', d.title, 'chunk_index', c.chunk_index,
             'content', c.content, 'score', round(f.score::numeric, 6), 'metadata', d.metadata,
             'source_url', d.source_url) order by f.score desc, c.id)
    from (
      select chunk_id, score from (
        select chunk_id, sum(score) as score from (
          select (v.value->>'chunk_id')::bigint as chunk_id,
                 case when v_mode = 'hybrid' then 1.0 / (v_rrf_k + v.ordinality) else (v.value->>'score')::float8 end as score
          from jsonb_array_elements(v_vector) with ordinality v
          union all
          select (k.value->>'chunk_id')::bigint,
                 case when v_mode = 'hybrid' then v_keyword_weight / (v_rrf_k + k.ordinality) else (k.value->>'score')::float8 end
          from jsonb_array_elements(v_keyword) with ordinality k
        ) ranked
        group by chunk_id
      ) fused
      where score >= coalesce((args->>'min_score')::float8, 0)
      order by score desc, chunk_id
      limit v_top_k
    ) f
    join keel.chunks c on c.id = f.chunk_id
    join keel.documents d on d.id = c.document_id), '[]'::jsonb));
end $$;

select keel.lock_down_api();
revoke all on function keel.rank_keyword(uuid, tsquery, jsonb, int, float8, float8, float8, float8, int) from public, anon, authenticated;
