-- Hybrid fusion over documents and over more than two rankings
-- (docs/search-quality.md, experiments 13+, issue 16).
-- Every knob defaults to the value the mean over the development
-- collections chose; `keel bench quality --try` varies them through
-- keel_search's arguments, like the knobs of 0009 and 0021.

-- Rankings as one, best first. p_rankings: [{"weight": w, "ranking":
-- [{"chunk_id": …, "score": …}, …]}, …], each ranking best first; a
-- ranking of weight 0 is left out.
-- - p_method 'raw': a chunk's own scores, unweighted (one ranking: keyword
--   or vector mode);
-- - 'rrf': weighted reciprocal rank fusion, w / (p_rrf_k + rank);
-- - 'scores': w times the chunk's score rescaled to [0, 1] over its
--   ranking (min-max; a chunk absent from a ranking gets 0 from it).
-- p_documents: a ranking's evidence counts for a document, not a chunk.
-- Ranks are counted over distinct documents (a document's second chunk does
-- not push the next document down), and a document's credit from each
-- ranking is its best chunk's there, so a document that one ranking finds
-- by one chunk and the other by another is fused as one. That document
-- score goes to the document's best chunk (by its own chunk-level fusion);
-- its other chunks keep their chunk-level scores, which are never higher.
create or replace function keel.fuse(p_rankings jsonb, p_method text, p_rrf_k float8, p_documents boolean)
returns table (chunk_id bigint, score float8)
language sql
stable
set search_path = keel, pg_catalog
as $$
  with entries as (
    select r.ordinality as list, (r.value->>'weight')::float8 as weight,
           (r.value->>'floor')::float8 as floor,
           (e.value->>'chunk_id')::bigint as chunk_id, (e.value->>'score')::float8 as score,
           e.ordinality as position
    from jsonb_array_elements(p_rankings) with ordinality r
    cross join lateral jsonb_array_elements(r.value->'ranking') with ordinality e
    where (r.value->>'weight')::float8 > 0
  ), placed as (
    select e.*, c.document_id,
           min(e.position) over (partition by e.list, c.document_id) as document_position,
           min(e.score) over (partition by e.list) as low,
           max(e.score) over (partition by e.list) as high
    from entries e
    join keel.chunks c on c.id = e.chunk_id
  ), credited as (
    select p.list, p.chunk_id, p.document_id,
           case p_method
             when 'rrf' then p.weight / (p_rrf_k + p.position)
             when 'scores' then p.weight * coalesce((p.score - p.low) / nullif(p.high - p.low, 0), 1)
             when 'floor' then p.weight * coalesce((p.score - p.floor) / nullif(p.high - p.floor, 0), 1)
             else p.score
           end as chunk_credit,
           p.weight / (p_rrf_k + dense_rank() over (partition by p.list order by p.document_position))
             as document_rank_credit
    from placed p
  ), chunk_scores as (
    select c.chunk_id, c.document_id, sum(c.chunk_credit) as score
    from credited c
    group by c.chunk_id, c.document_id
  ), document_scores as (
    select d.document_id, sum(d.credit) as score
    from (select c.list, c.document_id,
                 case when p_method = 'rrf' then max(c.document_rank_credit) else max(c.chunk_credit) end as credit
          from credited c
          group by c.list, c.document_id) d
    group by d.document_id
  )
  select s.chunk_id,
         case when p_documents and s.chunk_id = first_value(s.chunk_id)
                     over (partition by s.document_id order by s.score desc, s.chunk_id)
              then d.score else s.score end as score
  from chunk_scores s
  join document_scores d on d.document_id = s.document_id
  order by 2 desc, 1
$$;

-- Hybrid search for the caller's tenant, as in 0021 (modes, feedback,
-- query cache and model choice unchanged), with its fusion done by
-- keel.fuse and these knobs:
-- - `fusion`: 'rrf' (0021's) or 'scores' (min-max rescaled scores, the
--   vector ranking weighing 1 and the keyword ranking `keyword_weight`);
-- - `fuse_documents`: fuse document evidence, not chunk evidence;
-- - `first_vector_weight`: after dense feedback, the first vector ranking
--   stays in the fusion with this weight beside the feedback one;
-- - `feedback_rounds`: feedback repeated from the new fused ranking (the
--   query vector moves from the original query each time);
-- - `feedback_weighted`: the feedback chunks' vectors weigh their fused
--   scores in the mean instead of counting equally;
-- - `feedback_source`: 'fused' (0021's) or 'keyword' (the keyword
--   ranking's best chunks move the query vector).
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
  v_method text := case when args->>'mode' <> 'hybrid' then 'raw'
                        when args->>'fusion' in ('scores', 'floor') then args->>'fusion'
                        else 'rrf' end;
  v_documents boolean := args->>'mode' = 'hybrid' and coalesce((args->>'fuse_documents')::boolean, false);
  v_first_vector_weight float8 := case when args->>'mode' = 'hybrid'
                                       then coalesce((args->>'first_vector_weight')::float8, 0) else 0 end;
  -- Hybrid only by default: the fused ranking is the better feedback, and
  -- vector alone gained less for a second index scan (experiments 8, 12).
  v_feedback_chunks int := least(greatest(coalesce((args->>'feedback_chunks')::numeric::int,
                                                   case when args->>'mode' = 'hybrid' then 3 else 0 end), 0), 20);
  v_feedback_rounds int := least(greatest(coalesce((args->>'feedback_rounds')::numeric::int, 1), 1), 3);
  v_feedback_weighted boolean := coalesce((args->>'feedback_weighted')::boolean, false);
  v_feedback_from_keyword boolean := args->>'feedback_source' = 'keyword' and args->>'mode' = 'hybrid';
  v_feedback_vector_weight float8 := coalesce((args->>'feedback_vector_weight')::float8, 0.25);
  v_feedback_keyword_weight float8 := coalesce((args->>'feedback_keyword_weight')::float8, v_keyword_weight);
  v_feedback_rrf_k float8 := coalesce((args->>'feedback_rrf_k')::float8, v_rrf_k);
  v_feedback_documents boolean := args->>'mode' = 'hybrid'
                                  and coalesce((args->>'feedback_documents')::boolean, (args->>'fuse_documents')::boolean, false);
  v_keyword_dense_weight float8 := coalesce((args->>'keyword_dense_weight')::float8, 0);
  v_agreement_weight float8 := coalesce((args->>'agreement_weight')::float8, 0);
  v_vector_floor float8 := coalesce((args->>'vector_floor')::float8, -1);
  v_feedback_negative_weight float8 := coalesce((args->>'feedback_negative_weight')::float8, 0);
  v_feedback_terms int := least(greatest(coalesce((args->>'feedback_terms')::numeric::int, 0), 0), 10);
  v_feedback_term_weight float8 := coalesce((args->>'feedback_term_weight')::float8, 0);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_first_vector jsonb := '[]';
  v_keyword jsonb := '[]';
  v_query tsquery;
  v_terms jsonb;
  v_excluded tsquery;
  v_fused jsonb;
  v_feedback jsonb;
  v_background extensions.vector;
  v_final_embedding extensions.vector;
  v_keyword_dense jsonb;
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

  if v_agreement_weight <> 0 and v_mode = 'hybrid' then
    -- The share of the keyword ranking's first 10 chunks in the vector
    -- ranking's first 10, centred on one half.
    v_keyword_weight := v_keyword_weight * greatest(0, 1 + v_agreement_weight * (
      (select count(*) from jsonb_array_elements(v_keyword) with ordinality k
       join jsonb_array_elements(v_vector) with ordinality v on v.value->'chunk_id' = k.value->'chunk_id'
       where k.ordinality <= 10 and v.ordinality <= 10)::float8 / 10 - 0.5));
  end if;
  for v_round in 1 .. v_feedback_rounds loop
    exit when v_feedback_chunks = 0;
    -- The feedback chunks with their scores in the ranking they come from.
    if v_feedback_from_keyword then
      select jsonb_agg(k.value order by k.ordinality) into v_feedback
      from jsonb_array_elements(v_keyword) with ordinality k
      where k.ordinality <= v_feedback_chunks;
    else
      select jsonb_agg(jsonb_build_object('chunk_id', f.chunk_id, 'score', f.score) order by f.score desc, f.chunk_id)
      into v_fused
      from keel.fuse(jsonb_build_array(
                       jsonb_build_object('weight', 1, 'floor', v_vector_floor, 'ranking', v_vector),
                       jsonb_build_object('weight', v_feedback_keyword_weight, 'floor', 0, 'ranking', v_keyword),
                       jsonb_build_object('weight', v_first_vector_weight, 'floor', v_vector_floor, 'ranking', v_first_vector)),
                     v_method, v_feedback_rrf_k, v_feedback_documents) f;
      select jsonb_agg(f.value order by f.ordinality) into v_feedback
      from jsonb_array_elements(v_fused) with ordinality f
      where f.ordinality <= v_feedback_chunks;
    end if;
    exit when v_feedback is null or v_mode not in ('vector', 'hybrid') or v_feedback_vector_weight <= 0;
    select extensions.l2_normalize(sum(
             e.embedding
             * array_fill(case when v_feedback_weighted then (f.value->>'score')::real else 1 end,
                          array[v_dimensions])::extensions.vector))
    into v_centroid
    from jsonb_array_elements(v_feedback) f
    join keel.embeddings e on e.chunk_id = (f.value->>'chunk_id')::bigint
    where e.model = v_model and e.dimensions = v_dimensions;
    exit when v_centroid is null;
    v_background := null;
    if v_feedback_negative_weight > 0 then
      select extensions.l2_normalize(avg(e.embedding)) into v_background
      from jsonb_array_elements(v_fused) with ordinality f
      join keel.embeddings e on e.chunk_id = (f.value->>'chunk_id')::bigint
      where f.ordinality > 10 and e.model = v_model and e.dimensions = v_dimensions;
    end if;
    if v_round = 1 then
      v_first_vector := v_vector;
    end if;
    v_final_embedding := extensions.l2_normalize(v_embedding)
        * array_fill((1 - v_feedback_vector_weight)::real, array[v_dimensions])::extensions.vector
      + v_centroid * array_fill(v_feedback_vector_weight::real, array[v_dimensions])::extensions.vector
      - coalesce(v_background, array_fill(0::real, array[v_dimensions])::extensions.vector)
        * array_fill(v_feedback_negative_weight::real, array[v_dimensions])::extensions.vector;
    v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_final_embedding, v_filter, v_candidates);
  end loop;
  if v_keyword_dense_weight > 0 and v_mode = 'hybrid' then
    select jsonb_agg(jsonb_build_object('chunk_id', r.chunk_id, 'score', r.score) order by r.score desc, r.chunk_id)
    into v_keyword_dense
    from (select (k.value->>'chunk_id')::bigint as chunk_id,
                 1 - (e.embedding <=> coalesce(v_final_embedding, v_embedding)) as score
          from jsonb_array_elements(v_keyword) k
          join keel.embeddings e on e.chunk_id = (k.value->>'chunk_id')::bigint
          where e.model = v_model and e.dimensions = v_dimensions) r;
  end if;
  if v_feedback is not null and v_mode in ('keyword', 'hybrid') and v_terms is not null
     and v_feedback_terms > 0 and v_feedback_term_weight > 0 then
    select jsonb_object_agg(key, value::float8 * v_feedback_term_weight) into v_expansion
    from jsonb_each_text(keel.feedback_terms(
           v_tenant, array(select (f.value->>'chunk_id')::bigint from jsonb_array_elements(v_feedback) f),
           v_terms, v_feedback_terms));
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
      from keel.fuse(jsonb_build_array(
                       jsonb_build_object('weight', 1, 'floor', v_vector_floor, 'ranking', v_vector),
                       jsonb_build_object('weight', v_keyword_weight, 'floor', 0, 'ranking', v_keyword),
                       jsonb_build_object('weight', v_first_vector_weight, 'floor', v_vector_floor, 'ranking', v_first_vector),
                       jsonb_build_object('weight', v_keyword_dense_weight, 'floor', v_vector_floor,
                                          'ranking', coalesce(v_keyword_dense, '[]'))),
                     v_method, v_rrf_k, v_documents) f
      where f.score >= coalesce((args->>'min_score')::float8, 0)
      order by f.score desc, f.chunk_id
      limit v_top_k
    ) f
    join keel.chunks c on c.id = f.chunk_id
    join keel.documents d on d.id = c.document_id), '[]'::jsonb));
end $$;

select keel.lock_down_api();
revoke all on function keel.fuse(jsonb, text, float8, boolean) from public, anon, authenticated;
