-- Pseudo-relevance feedback in search (docs/search-quality.md, experiments
-- 8–11): the first ranking's best chunks are taken as relevant and the query
-- is moved towards them before a second, final ranking.
-- - dense (Rocchio on vectors): the query vector is interpolated with the
--   normalised mean of the feedback chunks' vectors, and the HNSW index is
--   scanned once more with it;
-- - keyword (RM3-like): the feedback chunks' most informative shared words
--   (tf·idf) are added to the keyword query with a reduced weight, at most
--   feedback_terms of them, so the postings read stay bounded.
-- Every knob defaults to the value the mean over the development
-- collections chose; `keel bench quality --try` varies them through
-- keel_search's arguments, like the ranking knobs of 0009.

-- The words of a websearch tsquery with the weight BM25 gives their query
-- frequency (qtf · (k3 + 1) / (qtf + k3); k3 0: once), and the words after
-- `-`, which exclude chunks.
create or replace function keel.keyword_terms(p_query tsquery, p_k3 float8,
                                              out terms jsonb, out excluded tsquery)
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select (select jsonb_object_agg(w.word, w.n * (p_k3 + 1) / (w.n + p_k3))
          from (select replace(m[2], '''''', '''') as word, count(*)::float8 as n
                from regexp_matches(p_query::text, '(!?)''((?:[^'']|'''')+)''', 'g') m
                where m[1] = ''
                group by 1) w),
         (select string_agg(distinct '''' || m[2] || '''', ' | ')::tsquery
          from regexp_matches(p_query::text, '(!?)''((?:[^'']|'''')+)''', 'g') m
          where m[1] = '!')
$$;

-- Up to p_limit of a tenant's chunks by BM25 over p_terms (lexeme → the
-- factor its inverse document frequency is multiplied by: the query-term
-- saturation of keel.keyword_terms, or a feedback word's reduced weight),
-- with title words (weight A) counting p_title_weight times. The score is
-- divided by its maximum (every word saturated), so it lies in [0, 1).
-- Chunks holding a p_excluded word are left out.
--
-- Scores come from keel.postings alone (migrations/0018): one index range
-- per word, in impact order. At most p_max_postings postings are read in
-- all: words are taken rarest first, each reading all its postings or an
-- equal share of what the rarer words left, so a rare word is always read
-- whole and only the least informative postings of the most common words are
-- left out. Metadata filters and exclusions are checked on the ranked
-- candidates.
create or replace function keel.rank_keyword_terms(
  p_tenant uuid, p_terms jsonb, p_excluded tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_title_weight float8, p_max_postings int
) returns jsonb
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_chunks float8;
  v_avg_length float8;
  v_terms jsonb := '[]';
  v_term record;
  v_left int := greatest(p_max_postings, 1);
  v_words_left int;
  v_take int;
  v_weight float8;
  -- The score of a chunk holding every word, saturated: the divisor.
  v_max float8;
begin
  if p_terms is null then
    return '[]';
  end if;
  select sum(chunks), sum(lexemes) / nullif(sum(chunks), 0) into v_chunks, v_avg_length
  from (select chunks, lexemes from keel.keyword_totals where tenant_id = p_tenant
        union all
        select chunks, lexemes from keel.keyword_total_deltas where tenant_id = p_tenant) t;
  if coalesce(v_chunks, 0) <= 0 then
    return '[]';
  end if;

  v_words_left := (select count(*) from jsonb_object_keys(p_terms));
  for v_term in
    select w.key as lexeme, w.value::float8 as factor, f.chunks
    from jsonb_each_text(p_terms) w
    cross join lateral (
      select sum(s.chunks) as chunks
      from (select chunks from keel.keyword_stats where tenant_id = p_tenant and lexeme = w.key
            union all
            select chunks from keel.keyword_stat_deltas where tenant_id = p_tenant and lexeme = w.key) s
    ) f
    order by f.chunks nulls first, w.key
  loop
    v_words_left := v_words_left - 1;
    continue when coalesce(v_term.chunks, 0) <= 0;
    v_weight := ln(1 + (v_chunks - v_term.chunks + 0.5) / (v_term.chunks + 0.5)) * v_term.factor;
    v_max := coalesce(v_max, 0) + v_weight * (p_k1 + 1);
    v_take := least(v_term.chunks, v_left / (v_words_left + 1));
    continue when v_take <= 0;
    v_left := v_left - v_take;
    v_terms := v_terms || jsonb_build_object('lexeme', v_term.lexeme, 'take', v_take, 'weight', v_weight);
  end loop;
  if v_max is null then
    return '[]';
  end if;

  return (
    select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score)
                              order by score desc, chunk_id), '[]'::jsonb)
    from (
      select s.chunk_id, s.score / v_max as score
      from (
        select p.chunk_id,
               sum(t.weight * p.tf * (p_k1 + 1)
                   / (p.tf + p_k1 * (1 - p_b + p_b * p.length / v_avg_length))) as score
        from jsonb_to_recordset(v_terms) t (lexeme text, take int, weight float8)
        cross join lateral (
          select k.chunk_id, k.tf + (p_title_weight - 1) * k.title_tf as tf, k.length
          from keel.postings k
          where k.tenant_id = p_tenant and k.lexeme = t.lexeme
          order by k.impact desc
          limit t.take
        ) p
        group by p.chunk_id
      ) s
      where (p_filter = '{}'::jsonb and p_excluded is null)
         or exists (select 1 from keel.chunks c join keel.documents d on d.id = c.document_id
                    where c.id = s.chunk_id and d.metadata @> p_filter
                      and (p_excluded is null or not c.search_vector @@ p_excluded))
      order by score desc, s.chunk_id
      limit p_limit
    ) ranked);
end $$;

-- 0009's ranking of a tsquery (name and arguments kept, so re-running 0009
-- or 0018 over this file replaces it in place): its words weighted by
-- keel.keyword_terms, ranked by keel.rank_keyword_terms; the last argument
-- bounds the postings read.
create or replace function keel.rank_keyword(
  p_tenant uuid, p_query tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_k3 float8, p_title_weight float8, p_max_matches int
) returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  select keel.rank_keyword_terms(p_tenant, q.terms, q.excluded, p_filter, p_limit,
                                 p_k1, p_b, p_title_weight, p_max_matches)
  from keel.keyword_terms(p_query, p_k3) q
$$;

-- The feedback words of a tenant's chunks p_chunks (the first ranking's
-- best): words held by at least two of them (one chunk's words are as
-- likely its own topic as the query's), not already in p_known, scored by
-- their mean length-normalised term frequency in the chunks times their
-- inverse document frequency in the tenant; the best p_count, each with its
-- score divided by the best one's, so the weights lie in (0, 1].
create or replace function keel.feedback_terms(p_tenant uuid, p_chunks bigint[], p_known jsonb, p_count int)
returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  with occurrences as (
    select t.lexeme, cardinality(t.positions)::float8 / length(c.search_vector) as tf
    from keel.chunks c cross join unnest(c.search_vector) t
    where c.id = any(p_chunks) and c.tenant_id = p_tenant
      and not coalesce(p_known ? t.lexeme, false)
  ), shared as (
    select lexeme, sum(tf) / cardinality(p_chunks) as tf
    from occurrences
    group by lexeme
    having count(*) >= least(2, cardinality(p_chunks))
  ), scored as (
    select s.lexeme,
           s.tf * ln(1 + (n.chunks - f.chunks + 0.5) / (f.chunks + 0.5)) as score
    from shared s
    cross join (select sum(chunks)::float8 as chunks
                from (select chunks from keel.keyword_totals where tenant_id = p_tenant
                      union all
                      select chunks from keel.keyword_total_deltas where tenant_id = p_tenant) t) n
    cross join lateral (
      select sum(d.chunks)::float8 as chunks
      from (select chunks from keel.keyword_stats where tenant_id = p_tenant and lexeme = s.lexeme
            union all
            select chunks from keel.keyword_stat_deltas where tenant_id = p_tenant and lexeme = s.lexeme) d
    ) f
    where f.chunks > 0
    order by score desc, s.lexeme
    limit greatest(p_count, 0)
  )
  select jsonb_object_agg(lexeme, score / best)
  from (select lexeme, score, max(score) over () as best from scored) s
$$;

-- A tenant's chunks nearest to p_embedding through the model's HNSW index,
-- at most p_limit, with pgvector's iterative scan so tenant and metadata
-- filters cannot starve the result (relaxed order; the ORDER BY restores
-- it).
create or replace function keel.rank_vector(
  p_tenant uuid, p_model text, p_dimensions int, p_embedding extensions.vector,
  p_filter jsonb, p_limit int
) returns jsonb
language plpgsql
stable
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_ranked jsonb;
begin
  perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
  perform set_config('hnsw.ef_search', greatest(40, p_limit)::text, true);
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
    ) ranked$q$, p_dimensions, p_model)
  into v_ranked
  using p_embedding, p_tenant, p_filter, p_limit;
  return v_ranked;
end $$;

-- The two rankings as one: in hybrid mode by weighted reciprocal rank
-- fusion (vector 1, keyword p_keyword_weight), otherwise the one ranking's
-- own scores. Best first.
create or replace function keel.fuse_rankings(
  p_vector jsonb, p_keyword jsonb, p_hybrid boolean, p_rrf_k float8, p_keyword_weight float8
) returns table (chunk_id bigint, score float8)
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select chunk_id, sum(score) as score from (
    select (v.value->>'chunk_id')::bigint as chunk_id,
           case when p_hybrid then 1.0 / (p_rrf_k + v.ordinality) else (v.value->>'score')::float8 end as score
    from jsonb_array_elements(p_vector) with ordinality v
    union all
    select (k.value->>'chunk_id')::bigint,
           case when p_hybrid then p_keyword_weight / (p_rrf_k + k.ordinality) else (k.value->>'score')::float8 end
    from jsonb_array_elements(p_keyword) with ordinality k
  ) ranked
  group by chunk_id
  order by score desc, chunk_id
$$;

-- Hybrid search for the caller's tenant (tenant through keel.resolve_tenant,
-- as in 0016). Modes: `vector` (cosine similarity, keel.rank_vector),
-- `keyword` (BM25, keel.rank_keyword_terms) and `hybrid` (weighted
-- reciprocal rank fusion of both). Each ranking contributes `candidates`
-- chunks (at least top_k).
--
-- Feedback: the best `feedback_chunks` chunks of the first ranking (the
-- fused one in hybrid mode) move the query towards them, and the final
-- ranking is computed again with the moved query: the query vector becomes
-- (1 − w)·q + w·mean(their vectors, normalised), w = `feedback_vector_weight`,
-- and the keyword query gains up to `feedback_terms` of their words
-- (keel.feedback_terms), each weighing `feedback_term_weight` times its
-- relative score. 0 chunks (or both weights 0) is the plain search of 0016.
-- Shipped: hybrid mode takes its 3 best fused chunks and moves the vector a
-- quarter of the way (+0.017 mean nDCG@10, every collection up, one more
-- HNSW scan); keyword expansion is off (+0.001 more for twice the time).
-- Every knob defaults to the value docs/search-quality.md measured best
-- (mean over the development collections).
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
  v_tenant uuid := keel.resolve_tenant(args);
  v_mode text := args->>'mode';
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_top_k int := (args->>'top_k')::int;
  v_candidates int := greatest(coalesce((args->>'candidates')::numeric::int, 40), (args->>'top_k')::int);
  v_rrf_k float8 := coalesce((args->>'rrf_k')::float8, 10);
  v_keyword_weight float8 := coalesce((args->>'keyword_weight')::float8, 0.75);
  v_k1 float8 := coalesce((args->>'bm25_k1')::float8, 1.2);
  v_b float8 := coalesce((args->>'bm25_b')::float8, 0.75);
  v_title_weight float8 := coalesce((args->>'title_weight')::float8, 1);
  -- Hybrid only by default: the fused ranking is the better feedback, and
  -- vector alone gained less for a second index scan (experiments 8, 12).
  v_feedback_chunks int := least(greatest(coalesce((args->>'feedback_chunks')::numeric::int,
                                                   case when args->>'mode' = 'hybrid' then 3 else 0 end), 0), 20);
  v_feedback_vector_weight float8 := coalesce((args->>'feedback_vector_weight')::float8, 0.25);
  v_feedback_terms int := least(greatest(coalesce((args->>'feedback_terms')::numeric::int, 0), 0), 10);
  v_feedback_term_weight float8 := coalesce((args->>'feedback_term_weight')::float8, 0);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_keyword jsonb := '[]';
  v_query tsquery;
  v_terms jsonb;
  v_excluded tsquery;
  v_feedback bigint[];
  v_centroid extensions.vector;
  v_expansion jsonb;
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

    v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_embedding, v_filter, v_candidates);
  end if;

  if v_mode in ('keyword', 'hybrid') then
    -- websearch syntax (`-word` excludes, quotes, `or`), except that a dash
    -- between spaces is punctuation in prose, not an exclusion.
    v_query := websearch_to_tsquery('english',
                 regexp_replace(args->>'query', '(^|\s)-+(?=\s|$)', '\1', 'g'));
    select q.terms, q.excluded into v_terms, v_excluded
    from keel.keyword_terms(v_query, coalesce((args->>'bm25_k3')::float8, 3)) q;
    v_keyword := keel.rank_keyword_terms(v_tenant, v_terms, v_excluded, v_filter, v_candidates,
                                         v_k1, v_b, v_title_weight, 5000);
  end if;

  if v_feedback_chunks > 0 then
    v_feedback := array(
      select f.chunk_id
      from keel.fuse_rankings(v_vector, v_keyword, v_mode = 'hybrid', v_rrf_k, v_keyword_weight) f
      order by f.score desc, f.chunk_id
      limit v_feedback_chunks);
  end if;
  if cardinality(v_feedback) > 0 and v_mode in ('vector', 'hybrid') and v_feedback_vector_weight > 0 then
    select extensions.l2_normalize(avg(e.embedding)) into v_centroid
    from keel.embeddings e
    where e.chunk_id = any(v_feedback) and e.model = v_model and e.dimensions = v_dimensions;
    if v_centroid is not null then
      v_vector := keel.rank_vector(
        v_tenant, v_model, v_dimensions,
        extensions.l2_normalize(v_embedding)
          * array_fill((1 - v_feedback_vector_weight)::real, array[v_dimensions])::extensions.vector
        + v_centroid * array_fill(v_feedback_vector_weight::real, array[v_dimensions])::extensions.vector,
        v_filter, v_candidates);
    end if;
  end if;
  if cardinality(v_feedback) > 0 and v_mode in ('keyword', 'hybrid') and v_terms is not null
     and v_feedback_terms > 0 and v_feedback_term_weight > 0 then
    select jsonb_object_agg(key, value::float8 * v_feedback_term_weight) into v_expansion
    from jsonb_each_text(keel.feedback_terms(v_tenant, v_feedback, v_terms, v_feedback_terms));
    if v_expansion is not null then
      v_keyword := keel.rank_keyword_terms(v_tenant, v_terms || v_expansion, v_excluded, v_filter,
                                           v_candidates, v_k1, v_b, v_title_weight, 5000);
    end if;
  end if;

  return jsonb_build_object('results', coalesce((
    select jsonb_agg(jsonb_build_object(
             'document_id', d.external_id, 'title', d.title, 'chunk_index', c.chunk_index,
             'content', c.content, 'score', round(f.score::numeric, 6), 'metadata', d.metadata,
             'source_url', d.source_url) order by f.score desc, c.id)
    from (
      select f.chunk_id, f.score
      from keel.fuse_rankings(v_vector, v_keyword, v_mode = 'hybrid', v_rrf_k, v_keyword_weight) f
      where f.score >= coalesce((args->>'min_score')::float8, 0)
      order by f.score desc, f.chunk_id
      limit v_top_k
    ) f
    join keel.chunks c on c.id = f.chunk_id
    join keel.documents d on d.id = c.document_id), '[]'::jsonb));
end $$;

select keel.lock_down_api();
revoke all on function keel.keyword_terms(tsquery, float8) from public, anon, authenticated;
revoke all on function keel.rank_keyword_terms(uuid, jsonb, tsquery, jsonb, int, float8, float8, float8, int) from public, anon, authenticated;
revoke all on function keel.rank_keyword(uuid, tsquery, jsonb, int, float8, float8, float8, float8, int) from public, anon, authenticated;
revoke all on function keel.feedback_terms(uuid, bigint[], jsonb, int) from public, anon, authenticated;
revoke all on function keel.rank_vector(uuid, text, int, extensions.vector, jsonb, int) from public, anon, authenticated;
revoke all on function keel.fuse_rankings(jsonb, jsonb, boolean, float8, float8) from public, anon, authenticated;
