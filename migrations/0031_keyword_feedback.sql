-- Keyword feedback from the keyword ranking's own best chunks
-- (docs/search-quality.md, "Keyword feedback from the keyword ranking",
-- experiments 21–23).
--
-- 0021 could add feedback words to the keyword query (RM3-like), taken
-- from the fused ranking's best chunks; it added 0.001 to the mean
-- nDCG@10 for twice the time and stayed off. Taken from the keyword
-- ranking's own best chunks instead, the same words lift hybrid search on
-- every development collection: the expanded keyword ranking finds more of
-- the relevant chunks while staying independent of the vector ranking,
-- which is what makes two rankings worth fusing (every change that pulled
-- the keyword ranking towards the vector one lost: proximity, fused
-- feedback, re-ranking by the query vector).
--
-- Hybrid search now ranks keywords in two steps inside one function:
-- 1. the best 4 chunks by the query's words, read with at most 2,000
--    postings (enough to find the best few; fewer cost CACM's verbose
--    queries), honouring filters and excluded words, give up to 10 feedback
--    words (keel.feedback_terms, 0021), each weighing half its relative
--    score;
-- 2. the ranking over the query's and the feedback words together, within
--    the same 5,000 postings as before (rarest words first).
-- Dense feedback (0022) then takes its chunks from the fusion of the vector
-- ranking and this expanded keyword ranking. Keyword mode is unchanged
-- unless `feedback_terms` asks for it (in this form it lowers CACM's
-- keyword mode, 0.484 → 0.477).
--
-- Measured (mean nDCG@10 over the development collections, the same
-- tenants and vectors): hybrid 0.597 → 0.605 (CACM 0.570 → 0.587,
-- Cranfield 0.415 → 0.421, MED 0.805 → 0.807), the knobs around the
-- default on a plateau of 0.598–0.607. Cost, in the database on the
-- 100k-chunk tenant of `bench load --scale 100k` (319 queries, three
-- alternating rounds): hybrid p50 4.8–5.0 → 6.7–6.8 ms, p95 7.7–7.9 →
-- 10.0–10.4 ms (the first step and the feedback words' statistics).

-- The words of p_terms (lexeme → the factor its inverse document frequency
-- is multiplied by) that a keyword ranking reads, rarest first, each with
-- its BM25 weight and how many of its postings to read (`take`): at most
-- p_max_postings in all, each word all its postings or an equal share of
-- what the rarer words left, so a rare word is always read whole and only
-- the least informative postings of the most common words are left out.
-- `weights` is the sum of the weights of the tenant's words, read or not.
create or replace function keel.keyword_plan(p_tenant uuid, p_terms jsonb, p_chunks float8,
                                             p_max_postings int, out words jsonb, out weights float8)
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_term record;
  v_left int := greatest(p_max_postings, 1);
  v_words_left int := (select count(*) from jsonb_object_keys(coalesce(p_terms, '{}')));
  v_take int;
  v_weight float8;
begin
  words := '[]';
  for v_term in
    select w.key as lexeme, w.value::float8 as factor, f.chunks
    from jsonb_each_text(coalesce(p_terms, '{}')) w
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
    v_weight := ln(1 + (p_chunks - v_term.chunks + 0.5) / (v_term.chunks + 0.5)) * v_term.factor;
    weights := coalesce(weights, 0) + v_weight;
    v_take := least(v_term.chunks, v_left / (v_words_left + 1));
    continue when v_take <= 0;
    v_left := v_left - v_take;
    words := words || jsonb_build_object('lexeme', v_term.lexeme, 'take', v_take, 'weight', v_weight);
  end loop;
end $$;

-- The best p_limit of a tenant's chunks by BM25 over the planned words
-- (keel.keyword_plan), title words (weight A) counting p_title_weight
-- times, that match the metadata filter and hold no excluded word. Raw
-- scores, best first.
create or replace function keel.keyword_ranked(
  p_tenant uuid, p_words jsonb, p_k1 float8, p_b float8, p_title_weight float8, p_avg_length float8,
  p_excluded tsquery, p_filter jsonb, p_limit int
) returns table (chunk_id bigint, score float8)
language sql
stable
set search_path = keel, pg_catalog
as $$
  select s.chunk_id, s.score
  from (
    select p.chunk_id,
           sum(t.weight * p.tf * (p_k1 + 1) / (p.tf + p_k1 * (1 - p_b + p_b * p.length / p_avg_length))) as score
    from jsonb_to_recordset(p_words) t (lexeme text, take int, weight float8)
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
  order by s.score desc, s.chunk_id
  limit p_limit
$$;

-- A keyword ranking (0021's: up to p_limit of a tenant's chunks by BM25 over
-- p_terms, scores divided by their maximum so they lie in [0, 1)), with
-- keyword feedback when p_feedback_chunks, p_feedback_terms and
-- p_feedback_weight are all positive: the best p_feedback_chunks chunks by
-- the query's words (read with at most p_feedback_postings postings) give up
-- to p_feedback_terms words not in p_terms, each weighing p_feedback_weight
-- times its relative score, and the ranking is over the query's words and
-- those together, within the same p_max_postings. Without them (zeros)
-- it ranks as 0021's did.
-- A new name, not new arguments of keel.rank_keyword_terms: an operator
-- re-running 0021 by hand would otherwise create an overload its own
-- keel.rank_keyword could not choose between.
create or replace function keel.rank_keyword_feedback(
  p_tenant uuid, p_terms jsonb, p_excluded tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_title_weight float8, p_max_postings int,
  p_feedback_chunks int, p_feedback_terms int, p_feedback_weight float8, p_feedback_postings int
) returns jsonb
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_chunks float8;
  v_avg_length float8;
  -- The query's words and the feedback words.
  v_terms jsonb := p_terms;
  v_plan record;
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

  if p_feedback_chunks > 0 and p_feedback_terms > 0 and p_feedback_weight > 0 then
    select p_terms || coalesce(jsonb_object_agg(w.key, w.value::float8 * p_feedback_weight), '{}') into v_terms
    from jsonb_each_text(keel.feedback_terms(
           p_tenant,
           array(select r.chunk_id
                 from keel.keyword_ranked(p_tenant,
                                          (select p.words from keel.keyword_plan(p_tenant, p_terms, v_chunks, p_feedback_postings) p),
                                          p_k1, p_b, p_title_weight, v_avg_length, p_excluded, p_filter, p_feedback_chunks) r),
           p_terms, p_feedback_terms)) w;
  end if;
  select * into v_plan from keel.keyword_plan(p_tenant, v_terms, v_chunks, p_max_postings);
  if v_plan.weights is null then
    return '[]';
  end if;
  -- The score of a chunk holding every word, saturated: the divisor.
  v_max := v_plan.weights * (p_k1 + 1);

  return coalesce((
    select jsonb_agg(jsonb_build_object('chunk_id', r.chunk_id, 'score', r.score / v_max)
                     order by r.score desc, r.chunk_id)
    from keel.keyword_ranked(p_tenant, v_plan.words, p_k1, p_b, p_title_weight, v_avg_length,
                             p_excluded, p_filter, p_limit) r), '[]'::jsonb);
end $$;

-- 0021's ranking, now keel.rank_keyword_feedback without feedback.
create or replace function keel.rank_keyword_terms(
  p_tenant uuid, p_terms jsonb, p_excluded tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_title_weight float8, p_max_postings int
) returns jsonb
language sql
stable
set search_path = keel, pg_catalog
as $$
  select keel.rank_keyword_feedback(p_tenant, p_terms, p_excluded, p_filter, p_limit,
                                    p_k1, p_b, p_title_weight, p_max_postings, 0, 0, 0, 0)
$$;

-- 0027's function; keyword feedback (above) replaces 0021's feedback words
-- from the fused ranking, and its defaults are on in hybrid mode.
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
  v_feedback_keyword_weight float8 := coalesce((args->>'feedback_keyword_weight')::float8, 1);
  v_k1 float8 := coalesce((args->>'bm25_k1')::float8, 1.2);
  v_b float8 := coalesce((args->>'bm25_b')::float8, 0.6);
  v_title_weight float8 := coalesce((args->>'title_weight')::float8, 1);
  -- Hybrid only by default: the fused ranking is the better feedback, and
  -- vector alone gained less for a second index scan (experiments 8, 12).
  v_feedback_chunks int := least(greatest(coalesce((args->>'feedback_chunks')::numeric::int,
                                                   case when args->>'mode' = 'hybrid' then 3 else 0 end), 0), 20);
  v_feedback_vector_weight float8 := coalesce((args->>'feedback_vector_weight')::float8, 0.25);
  v_feedback_pool int := least(greatest(coalesce((args->>'feedback_pool')::numeric::int, 40), 0), 1000);
  -- Keyword feedback: hybrid only by default, like dense feedback (keyword
  -- mode keeps plain BM25; experiment 23).
  v_feedback_terms int := least(greatest(coalesce((args->>'feedback_terms')::numeric::int,
                                                  case when args->>'mode' = 'hybrid' then 10 else 0 end), 0), 20);
  v_feedback_term_weight float8 := least(greatest(coalesce((args->>'feedback_term_weight')::float8, 0.5), 0), 1);
  v_keyword_feedback_chunks int := least(greatest(coalesce((args->>'keyword_feedback_chunks')::numeric::int, 4), 0), 20);
  v_keyword_feedback_postings int := least(greatest(coalesce((args->>'keyword_feedback_postings')::numeric::int, 2000), 1), 5000);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_pool bigint[];
  v_keyword jsonb := '[]';
  v_query tsquery;
  v_terms jsonb;
  v_excluded tsquery;
  v_feedback bigint[];
  v_centroid extensions.vector;
  -- The query vector moved toward the feedback chunks' centroid.
  v_moved extensions.vector;
begin
  if v_mode in ('vector', 'hybrid') then
    if not coalesce((args->>'model_chosen')::boolean, false)
       and exists (select 1 from keel.embedding_models
                   where not (model = v_model and dimensions = v_dimensions))
       and not keel.model_covers_tenant(v_tenant, v_model, v_dimensions) then
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

    if v_feedback_chunks > 0 and v_feedback_pool > v_candidates then
      -- One walk for both: the pool, whose first v_candidates are the ranking.
      v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_embedding, v_filter, v_feedback_pool);
      v_pool := array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_vector) x);
      v_vector := coalesce((select jsonb_agg(x order by i) from jsonb_array_elements(v_vector) with ordinality t (x, i)
                            where i <= v_candidates), '[]'::jsonb);
    else
      v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_embedding, v_filter, v_candidates);
      v_pool := array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_vector) x);
    end if;
  end if;

  if v_mode in ('keyword', 'hybrid') then
    -- websearch syntax (`-word` excludes, quotes, `or`), except that a dash
    -- between spaces is punctuation in prose, not an exclusion.
    v_query := websearch_to_tsquery('english',
                 regexp_replace(args->>'query', '(^|\s)-+(?=\s|$)', '\1', 'g'));
    select q.terms, q.excluded into v_terms, v_excluded
    from keel.keyword_terms(v_query, coalesce((args->>'bm25_k3')::float8, 3)) q;
    v_keyword := keel.rank_keyword_feedback(v_tenant, v_terms, v_excluded, v_filter, v_candidates,
                                         v_k1, v_b, v_title_weight, 5000,
                                         v_keyword_feedback_chunks, v_feedback_terms, v_feedback_term_weight,
                                         v_keyword_feedback_postings);
  end if;

  if v_feedback_chunks > 0 then
    v_feedback := array(
      select f.chunk_id
      from keel.fuse_rankings(v_vector, v_keyword, v_mode = 'hybrid', v_rrf_k, v_feedback_keyword_weight) f
      order by f.score desc, f.chunk_id
      limit v_feedback_chunks);
  end if;
  if cardinality(v_feedback) > 0 and v_mode in ('vector', 'hybrid') and v_feedback_vector_weight > 0 then
    select extensions.l2_normalize(avg(e.embedding)) into v_centroid
    from keel.embeddings e
    where e.chunk_id = any(v_feedback) and e.model = v_model and e.dimensions = v_dimensions;
    if v_centroid is not null then
      v_moved := extensions.l2_normalize(v_embedding)
          * array_fill((1 - v_feedback_vector_weight)::real, array[v_dimensions])::extensions.vector
        + v_centroid * array_fill(v_feedback_vector_weight::real, array[v_dimensions])::extensions.vector;
      if v_feedback_pool > 0 then
        v_vector := keel.rerank_vector(
          v_model, v_dimensions, v_moved,
          v_pool || array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_keyword) x),
          v_candidates);
      else
        v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_moved, v_filter, v_candidates);
      end if;
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

revoke all on function keel.keyword_plan(uuid, jsonb, float8, int) from public, anon, authenticated;
revoke all on function keel.keyword_ranked(uuid, jsonb, float8, float8, float8, float8, tsquery, jsonb, int)
  from public, anon, authenticated;
revoke all on function keel.rank_keyword_feedback(uuid, jsonb, tsquery, jsonb, int, float8, float8, float8, int, int, int, float8, int)
  from public, anon, authenticated;

select keel.lock_down_api();
