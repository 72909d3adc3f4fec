-- Keyword search read from an inverted index (docs/search-quality.md,
-- "Postings"): the same BM25 as migrations/0009, computed from a postings
-- table with a handful of index scans instead of reading every candidate
-- chunk's tsvector and calling ts_rank_cd once per chunk and query word; and
-- the keyword statistics written as deltas folded later, so concurrent
-- writers of one tenant never wait on each other.

-- One row per (chunk, lexeme): the lexeme's term frequency in the chunk (all
-- positions, and those of the title, weight A) and the chunk's length
-- (distinct lexemes, as BM25 has used since 0006). `impact` orders a word's
-- postings by how much they can add to BM25: the term-frequency part at the
-- textbook k1 1.2 / b 0.75, for chunks of 100 lexemes on average. A fixed
-- average keeps it a function of the row alone (so a deleted chunk's
-- postings are found again by key); it only decides which postings of a very
-- common word are read first, never the score, which uses the tenant's own
-- statistics. No foreign keys: a chunk writes ~100 postings, and checking
-- each would cost more than the chunk; the triggers below keep them exact.
create table if not exists keel.postings (
  tenant_id uuid not null,
  lexeme text not null,
  impact real not null,
  chunk_id bigint not null,
  tf smallint not null,
  title_tf smallint not null,
  length int not null
);
-- The only index: read in impact order (index-only, the include columns are
-- all BM25 needs), and found by full key when a chunk is deleted.
create unique index if not exists postings_by_impact
  on keel.postings (tenant_id, lexeme, impact desc, chunk_id) include (tf, title_tf, length);

create or replace function keel.posting_impact(p_tf int, p_length int) returns real
language sql
immutable
parallel safe
set search_path = pg_catalog
as $$ select (p_tf * 2.2 / (p_tf + 1.2 * (0.25 + 0.75 * p_length / 100.0)))::real $$;

-- Changes to keel.keyword_stats (document frequencies) and
-- keel.keyword_totals (chunk count and total length) not yet folded into
-- them. Writers only append here; whoever holds a tenant's fold lock moves
-- them into the statistics, and readers add what is still pending.
create table if not exists keel.keyword_stat_deltas (
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  lexeme text not null,
  chunks int not null
);
create index if not exists keyword_stat_deltas_word on keel.keyword_stat_deltas (tenant_id, lexeme);

create table if not exists keel.keyword_total_deltas (
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  chunks bigint not null,
  lexemes bigint not null
);
create index if not exists keyword_total_deltas_tenant on keel.keyword_total_deltas (tenant_id);

-- Moves a tenant's pending deltas into its statistics. Only the holder of
-- the tenant's fold lock calls it, so the statistics rows have one writer
-- at a time and deltas are never folded twice.
create or replace function keel.fold_keyword_deltas(p_tenant uuid) returns void
language sql
set search_path = keel, pg_catalog
as $$
  with folded as (
    delete from keel.keyword_stat_deltas where tenant_id = p_tenant returning lexeme, chunks
  )
  insert into keel.keyword_stats as s (tenant_id, lexeme, chunks)
  select p_tenant, lexeme, sum(chunks) from folded group by lexeme having sum(chunks) <> 0
  order by lexeme
  on conflict (tenant_id, lexeme) do update set chunks = s.chunks + excluded.chunks;
  with folded as (
    delete from keel.keyword_total_deltas where tenant_id = p_tenant returning chunks, lexemes
  )
  insert into keel.keyword_totals as s (tenant_id, chunks, lexemes)
  select p_tenant, sum(chunks), sum(lexemes) from folded having count(*) > 0
  on conflict (tenant_id) do update
    set chunks = s.chunks + excluded.chunks, lexemes = s.lexemes + excluded.lexemes;
$$;

-- Writes the changed chunks' postings (insert) or removes them (delete),
-- appends the statistics' deltas, then folds the tenant's deltas if no other
-- transaction is folding them: a writer never waits for another. The lock
-- is held to the end of the transaction, so within one batch the same
-- writer folds after each statement, and the others' deltas, once
-- committed, are folded by the next statement of whoever holds it.
create or replace function keel.index_keywords() returns trigger
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_sign int := case tg_op when 'INSERT' then 1 else -1 end;
  v_tenant uuid;
begin
  if tg_op = 'INSERT' then
    insert into keel.postings (tenant_id, lexeme, impact, chunk_id, tf, title_tf, length)
    select c.tenant_id, t.lexeme, keel.posting_impact(cardinality(t.positions), length(c.search_vector)),
           c.id, cardinality(t.positions), coalesce(cardinality(array_positions(t.weights, 'A')), 0),
           length(c.search_vector)
    from changed c cross join unnest(c.search_vector) t;
  else
    delete from keel.postings p
    using (select c.tenant_id, t.lexeme,
                  keel.posting_impact(cardinality(t.positions), length(c.search_vector)) as impact,
                  c.id as chunk_id
           from changed c cross join unnest(c.search_vector) t) o
    where p.tenant_id = o.tenant_id and p.lexeme = o.lexeme and p.impact = o.impact
      and p.chunk_id = o.chunk_id;
  end if;
  -- Chunks deleted with their tenant have no statistics left to change.
  insert into keel.keyword_stat_deltas (tenant_id, lexeme, chunks)
  select c.tenant_id, l.lexeme, v_sign * count(*)
  from changed c cross join unnest(tsvector_to_array(c.search_vector)) l (lexeme)
  where exists (select 1 from keel.tenants t where t.id = c.tenant_id)
  group by 1, 2;
  insert into keel.keyword_total_deltas (tenant_id, chunks, lexemes)
  select c.tenant_id, v_sign * count(*), v_sign * sum(length(c.search_vector))
  from changed c
  where exists (select 1 from keel.tenants t where t.id = c.tenant_id)
  group by 1;
  for v_tenant in select distinct c.tenant_id from changed c
                  where exists (select 1 from keel.tenants t where t.id = c.tenant_id) loop
    if pg_try_advisory_xact_lock(hashtextextended('keel.keyword_stats:' || v_tenant, 0)) then
      perform keel.fold_keyword_deltas(v_tenant);
    end if;
  end loop;
  return null;
end $$;

-- Existing chunks, indexed and counted afresh (re-runnable). One statement,
-- so the lock keeps writers out until the new triggers count for them.
do $$
begin
  lock table keel.chunks in share row exclusive mode;
  drop trigger if exists chunks_count_keywords_insert on keel.chunks;
  drop trigger if exists chunks_count_keywords_delete on keel.chunks;
  drop trigger if exists chunks_index_keywords_insert on keel.chunks;
  drop trigger if exists chunks_index_keywords_delete on keel.chunks;
  truncate keel.postings, keel.keyword_stat_deltas, keel.keyword_total_deltas;
  delete from keel.keyword_stats;
  delete from keel.keyword_totals;
  insert into keel.postings (tenant_id, lexeme, impact, chunk_id, tf, title_tf, length)
  select c.tenant_id, t.lexeme, keel.posting_impact(cardinality(t.positions), length(c.search_vector)),
         c.id, cardinality(t.positions), coalesce(cardinality(array_positions(t.weights, 'A')), 0),
         length(c.search_vector)
  from keel.chunks c cross join unnest(c.search_vector) t;
  insert into keel.keyword_stats (tenant_id, lexeme, chunks)
  select c.tenant_id, l.lexeme, count(*)
  from keel.chunks c cross join unnest(tsvector_to_array(c.search_vector)) l (lexeme)
  group by 1, 2;
  insert into keel.keyword_totals (tenant_id, chunks, lexemes)
  select tenant_id, count(*), sum(length(search_vector)) from keel.chunks group by 1;
  create trigger chunks_index_keywords_insert after insert on keel.chunks
    referencing new table as changed for each statement execute function keel.index_keywords();
  create trigger chunks_index_keywords_delete after delete on keel.chunks
    referencing old table as changed for each statement execute function keel.index_keywords();
end $$;
drop function if exists keel.count_keywords();

-- Up to p_limit of a tenant's chunks by BM25 over the query's words, as in
-- migrations/0009: title words (weight A) count p_title_weight times, a word
-- the query holds qtf times weighs qtf · (k3 + 1) / (qtf + k3), and the
-- score is divided by the query's maximum (every word saturated), so it
-- lies in [0, 1). Words after `-` exclude chunks.
--
-- Scores come from keel.postings alone: one index range per query word, in
-- impact order. At most p_max_matches postings are read in all: words are
-- taken rarest first, each reading all its postings or an equal share of
-- what the rarer words left, so a rare word is always read whole and only
-- the least informative postings of the most common words are left out.
-- Metadata filters and exclusions are checked on the ranked candidates.
--
-- Name and arguments are 0009's, so keel_search (0016) calls it unchanged
-- and re-running 0009 over this migration replaces it in place: the last
-- argument, keel_search's 5,000, now bounds postings read (p_max_matches).
create or replace function keel.rank_keyword(
  p_tenant uuid, p_query tsquery, p_filter jsonb, p_limit int,
  p_k1 float8, p_b float8, p_k3 float8, p_title_weight float8, p_max_matches int
) returns jsonb
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_chunks float8;
  v_avg_length float8;
  v_words jsonb;
  v_excluded tsquery;
  v_terms jsonb := '[]';
  v_term record;
  v_left int := greatest(p_max_matches, 1);
  v_words_left int;
  v_take int;
  v_weight float8;
  -- The score of a chunk holding every word, saturated: the divisor.
  v_max float8;
begin
  select sum(chunks), sum(lexemes) / nullif(sum(chunks), 0) into v_chunks, v_avg_length
  from (select chunks, lexemes from keel.keyword_totals where tenant_id = p_tenant
        union all
        select chunks, lexemes from keel.keyword_total_deltas where tenant_id = p_tenant) t;
  if coalesce(v_chunks, 0) <= 0 then
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
  if v_words is null then
    return '[]';
  end if;

  v_words_left := (select count(*) from jsonb_object_keys(v_words));
  for v_term in
    select w.key as lexeme, w.value::float8 as qtf, f.chunks
    from jsonb_each_text(v_words) w
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
    v_weight := ln(1 + (v_chunks - v_term.chunks + 0.5) / (v_term.chunks + 0.5))
                * v_term.qtf * (p_k3 + 1) / (v_term.qtf + p_k3);
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
      where (p_filter = '{}'::jsonb and v_excluded is null)
         or exists (select 1 from keel.chunks c join keel.documents d on d.id = c.document_id
                    where c.id = s.chunk_id and d.metadata @> p_filter
                      and (v_excluded is null or not c.search_vector @@ v_excluded))
      order by score desc, s.chunk_id
      limit p_limit
    ) ranked);
end $$;

select keel.lock_down_api();
revoke all on function keel.posting_impact(int, int) from public, anon, authenticated;
revoke all on function keel.fold_keyword_deltas(uuid) from public, anon, authenticated;
revoke all on function keel.index_keywords() from public, anon, authenticated;
revoke all on function keel.rank_keyword(uuid, tsquery, jsonb, int, float8, float8, float8, float8, int) from public, anon, authenticated;
