-- Vectors of a replaced embedding model. After a model change, search keeps
-- serving the old model's vectors until the new model covers a tenant's
-- chunks; from then on the old vectors are dead weight. Once the configured
-- model has been in place for `after_seconds` (a window to roll the change
-- back without re-embedding) and a tenant has no job left for it (nothing
-- pending, nothing failed), that tenant's vectors and jobs of every other
-- model are deleted, at most `limit` rows of each per run.
create or replace function public.keel_prune_replaced_vectors(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_limit int := (args->>'limit')::int;
  v_vectors int := 0;
  v_jobs int := 0;
begin
  if exists (select 1 from keel.embedding_models
             where model = v_model and dimensions = v_dimensions
               and prepared_at < now() - make_interval(secs => (args->>'after_seconds')::int)) then
    delete from keel.embeddings
    where ctid in (
      select e.ctid from keel.embeddings e
      where (e.model, e.dimensions) is distinct from (v_model, v_dimensions)
        and not exists (select 1 from keel.embedding_jobs j
                        where j.tenant_id = e.tenant_id and j.model = v_model and j.dimensions = v_dimensions)
      limit v_limit);
    get diagnostics v_vectors = row_count;
    delete from keel.embedding_jobs
    where ctid in (
      select j.ctid from keel.embedding_jobs j
      where (j.model, j.dimensions) is distinct from (v_model, v_dimensions)
        and not exists (select 1 from keel.embedding_jobs c
                        where c.tenant_id = j.tenant_id and c.model = v_model and c.dimensions = v_dimensions)
      limit v_limit);
    get diagnostics v_jobs = row_count;
  end if;
  return jsonb_build_object('replaced_vectors_pruned', v_vectors, 'replaced_jobs_pruned', v_jobs);
end $$;

select keel.lock_down_api();
