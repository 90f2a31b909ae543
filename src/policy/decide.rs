//! Deciding one request: the candidate statements for a caller and action
//! (cached per caller), evaluated natively or by Cedar, and the static check of
//! whether a caller could ever be allowed an action.

use super::parse::{covers_action, id_str};
use super::*;

impl Policy {
    /// Authorize one request. Never panics; internal failures deny with an error.
    pub fn decide(&self, req: &Request, groups: &Groups) -> Decision {
        if self.inner.ordered.is_empty() {
            return Decision {
                allowed: false,
                action: req.action,
                policies: Vec::new(),
                limits: Limits::default(),
                errors: Vec::new(),
            };
        }
        match self.try_decide(req, groups, true) {
            Ok(d) => d,
            Err(e) => Decision::internal_error(req.action, e),
        }
    }

    /// The candidate policies for (caller, groups, action), cached per caller.
    pub(super) fn candidates(
        &self,
        env: &Env,
        caller: &str,
        groups: &[EntityUid],
        action: Action,
    ) -> Result<Arc<Candidates>, PolicyError> {
        let slot = action.index();
        {
            let cache = self
                .inner
                .cache
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = cache.get(caller) {
                if entry.groups == groups {
                    if let Some(c) = &entry.per_action[slot] {
                        return Ok(Arc::clone(c));
                    }
                }
            }
        }
        let action_uid = &env.actions[slot];
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(caller));
        let chosen: Vec<&Meta> = self
            .inner
            .ordered
            .iter()
            .filter(|m| {
                covers_action(&m.action, action_uid)
                    && principal_matches(&m.principal, env, &me, groups)
            })
            .collect();
        let needs = chosen.iter().fold(Needs::default(), |n, m| n.or(m.needs));
        let native = chosen.iter().all(|m| m.native.is_some());
        let set = if native {
            None
        } else {
            Some(cedar_set(&chosen)?)
        };
        let candidates = Arc::new(Candidates {
            set,
            chosen: chosen.iter().map(|m| m.index).collect(),
            needs,
            native,
        });
        let mut cache = self
            .inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_CALLERS && !cache.contains_key(caller) {
            cache.clear();
        }
        let entry = cache
            .entry(caller.to_string())
            .or_insert_with(|| CallerEntry {
                groups: groups.to_vec(),
                per_action: Default::default(),
            });
        if entry.groups != groups {
            *entry = CallerEntry {
                groups: groups.to_vec(),
                per_action: Default::default(),
            };
        }
        entry.per_action[slot] = Some(Arc::clone(&candidates));
        Ok(candidates)
    }

    fn try_decide(
        &self,
        req: &Request,
        groups: &Groups,
        allow_native: bool,
    ) -> Result<Decision, PolicyError> {
        let env = env()?;
        let action = req.action;
        let group_uids = groups.uids_of(req.caller);
        let candidates = self.candidates(env, req.caller, group_uids, action)?;
        if candidates.chosen.is_empty() {
            return Ok(self.finish(action, false, Vec::new(), Vec::new()));
        }
        let object = req.object.unwrap_or("");
        if allow_native && candidates.native {
            return self.decide_native(&candidates, req, group_uids, object);
        }
        let principal =
            EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(req.caller));
        let resource_type = &env.resource_types[action.index()];
        let resource =
            EntityUid::from_type_name_and_id(resource_type.clone(), EntityId::new(object));
        let needs = candidates.needs;
        let entities = cedar_entities(env, req, needs, (&principal, group_uids), &resource)?;
        let context = cedar_context(env, req, needs)?;
        let request = cedar_policy::Request::new(
            principal,
            env.actions[action.index()].clone(),
            resource,
            context,
            None,
        )
        .map_err(internal)?;
        self.decide_cedar(&candidates, action, &request, &entities)
    }

    /// Decide with Cedar: the candidates' policy set (built now when it was not
    /// cached), the policies that determined the answer and the errors of those
    /// that could not be evaluated.
    fn decide_cedar(
        &self,
        candidates: &Candidates,
        action: Action,
        request: &cedar_policy::Request,
        entities: &Entities,
    ) -> Result<Decision, PolicyError> {
        let env = env()?;
        let built;
        let set = match &candidates.set {
            Some(set) => set,
            None => {
                let chosen: Vec<&Meta> = candidates
                    .chosen
                    .iter()
                    .filter_map(|&i| self.inner.ordered.get(i))
                    .collect();
                built = cedar_set(&chosen)?;
                &built
            }
        };
        let response = env.authorizer.is_authorized(request, set, entities);
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let determining: Vec<&Meta> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.inner.meta.get(id_str(id)))
            .collect();
        let errors = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                let name = self
                    .inner
                    .meta
                    .get(id_str(pe.policy_id()))
                    .map_or_else(|| pe.policy_id().to_string(), |m| m.name.clone());
                format!("{name}: {}", pe.inner())
            })
            .collect();
        Ok(self.finish(action, allowed, determining, errors))
    }

    /// Decide with the native evaluator (every candidate compiled), with
    /// Cedar's rules: a policy holds when its resource scope matches, every
    /// `when` is true and every `unless` false; one that errors does not hold
    /// and its error is reported; any holding forbid denies (the holding
    /// forbids decide), else any holding permit allows (the permits decide).
    fn decide_native(
        &self,
        candidates: &Candidates,
        req: &Request,
        groups: &[EntityUid],
        object: &str,
    ) -> Result<Decision, PolicyError> {
        let action = req.action;
        let (resource_type, resource_attr) = action.resource_shape();
        let nreq = native::Req {
            caller: req.caller,
            groups,
            resource_type,
            resource_attr,
            row: None,
            object,
            script: req.script,
            params: req.params,
            now: req.now,
        };
        let mut permits: Vec<&Meta> = Vec::new();
        let mut forbids: Vec<&Meta> = Vec::new();
        let mut errors = Vec::new();
        for &i in &candidates.chosen {
            let Some(m) = self.inner.ordered.get(i) else {
                continue;
            };
            if !m.rscope.matches(resource_type, object) {
                continue;
            }
            let Some(conds) = &m.native else {
                return Err(PolicyError::new(format!(
                    "internal error: {} is not compiled",
                    m.name
                )));
            };
            match native::satisfied(conds, &nreq) {
                Ok(true) if m.effect == Effect::Forbid => forbids.push(m),
                Ok(true) => permits.push(m),
                Ok(false) => {}
                Err(e) => errors.push(format!("{}: {e}", m.name)),
            }
        }
        Ok(if forbids.is_empty() {
            self.finish(action, !permits.is_empty(), permits, errors)
        } else {
            self.finish(action, false, forbids, errors)
        })
    }

    fn finish(
        &self,
        action: Action,
        allowed: bool,
        mut determining: Vec<&Meta>,
        errors: Vec<String>,
    ) -> Decision {
        determining.sort_by_key(|m| m.index);
        let limits = if allowed && action == Action::Run {
            determining
                .iter()
                .fold(Limits::default(), |acc, m| acc.min(&m.limits))
        } else {
            Limits::default()
        };
        Decision {
            allowed,
            action,
            policies: determining.iter().map(|m| m.name.clone()).collect(),
            limits,
            errors,
        }
    }

    /// `decide` without the native evaluator: Cedar alone. Tests and the
    /// `policy_diff` fuzz target cross-check the two; any difference is a bug.
    #[doc(hidden)]
    pub fn decide_via_cedar(&self, req: &Request, groups: &Groups) -> Decision {
        match self.try_decide(req, groups, false) {
            Ok(d) => d,
            Err(e) => Decision::internal_error(req.action, e),
        }
    }

    /// Conservative static check, for refusing a script before it runs.
    ///
    /// Returns `false` only if no `permit` can ever match `caller` (with
    /// `caller_groups`) and `action` judging by its principal and action scope,
    /// or if an unconditional `forbid` (no `when`/`unless`, resource scope
    /// unconstrained or `is <the action's resource type>`) matches them.
    /// Conditions of permits are ignored (assumed satisfiable).
    pub fn could_ever_allow(&self, caller: &str, caller_groups: &[String], action: Action) -> bool {
        let Ok(env) = env() else {
            return false;
        };
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(caller));
        let groups: Vec<EntityUid> = caller_groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(env.group.clone(), EntityId::new(g)))
            .collect();
        let principal_matches = |c: &PrincipalConstraint| principal_matches(c, env, &me, &groups);
        let action_uid = &env.actions[action.index()];
        let resource_type = action.resource_shape().0;
        let mut permitted = false;
        for m in &self.inner.ordered {
            if !principal_matches(&m.principal) || !covers_action(&m.action, action_uid) {
                continue;
            }
            match m.effect {
                Effect::Permit => permitted = true,
                Effect::Forbid => {
                    let all_resources = match &m.rscope {
                        ResourceScope::Any => true,
                        ResourceScope::Type(t) => t == resource_type,
                        _ => false,
                    };
                    if !m.conditional && all_resources {
                        return false;
                    }
                }
            }
        }
        permitted
    }
}

/// Can a principal scope constraint match `me` whose groups are `groups`?
/// (Groups have no parents, so `in` is "is me or one of my groups".)
pub(super) fn principal_matches(
    c: &PrincipalConstraint,
    env: &Env,
    me: &EntityUid,
    groups: &[EntityUid],
) -> bool {
    let me_or_my_group = |uid: &EntityUid| uid == me || groups.contains(uid);
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) => uid == me,
        PrincipalConstraint::In(uid) => me_or_my_group(uid),
        PrincipalConstraint::Is(t) => *t == env.peer,
        PrincipalConstraint::IsIn(t, uid) => *t == env.peer && me_or_my_group(uid),
    }
}

/// The Cedar policy set evaluating `chosen`.
pub(super) fn cedar_set(chosen: &[&Meta]) -> Result<PolicySet, PolicyError> {
    PolicySet::from_policies(chosen.iter().map(|m| m.eval.clone())).map_err(internal)
}

pub(super) fn string_entity(
    uid: EntityUid,
    attr: &str,
    value: &str,
    parents: &[EntityUid],
) -> Result<Entity, PolicyError> {
    Entity::new_with_tags(
        uid,
        [(
            attr.to_string(),
            RestrictedExpression::new_string(value.to_string()),
        )],
        parents.iter().cloned(),
        [],
    )
    .map_err(internal)
}

/// A Cedar object peerfs builds that Cedar refused: a bug of peerfs, reported
/// with the decision (which denies).
fn internal(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::new(format!("internal error: {e}"))
}

/// The entities a Cedar request needs (only those the candidates read): the
/// principal with its name and groups, the resource with its attribute, and the
/// params as tags of the `Params` entity.
fn cedar_entities(
    env: &Env,
    req: &Request,
    needs: Needs,
    (principal, groups): (&EntityUid, &[EntityUid]),
    resource: &EntityUid,
) -> Result<Entities, PolicyError> {
    let mut entities = Vec::with_capacity(3);
    if needs.principal {
        entities.push(string_entity(
            principal.clone(),
            "name",
            req.caller,
            groups,
        )?);
    }
    if needs.resource {
        entities.push(string_entity(
            resource.clone(),
            req.action.resource_shape().1,
            req.object.unwrap_or(""),
            &[],
        )?);
    }
    if needs.ctx_params {
        let tags: Vec<(String, RestrictedExpression)> = match req.params {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), RestrictedExpression::new_string(s))
                })
                .collect(),
            _ => Vec::new(),
        };
        entities
            .push(Entity::new_with_tags(env.params_uid.clone(), [], [], tags).map_err(internal)?);
    }
    if entities.is_empty() {
        Ok(Entities::empty())
    } else {
        Entities::from_entities(entities, None).map_err(internal)
    }
}

/// The principal (with its groups) and the params entity, for a row decision.
pub(super) fn cedar_principal_and_params(
    env: &Env,
    caller: &str,
    params: &serde_json::Value,
    who: (&EntityUid, &[EntityUid]),
) -> Result<Entities, PolicyError> {
    let req = row_request(caller, "", params, &[], 0);
    let needs = Needs {
        principal: true,
        ctx_params: true,
        ..Needs::default()
    };
    cedar_entities(env, &req, needs, who, who.0)
}

/// Every field of the context, for a row decision.
pub(super) fn cedar_context_full(
    env: &Env,
    caller: &str,
    script: &str,
    params: &serde_json::Value,
    chain: &[String],
    now: i64,
) -> Result<Context, PolicyError> {
    cedar_context(
        env,
        &row_request(caller, script, params, chain, now),
        Needs::ALL,
    )
}

fn row_request<'a>(
    caller: &'a str,
    script: &'a str,
    params: &'a serde_json::Value,
    chain: &'a [String],
    now: i64,
) -> Request<'a> {
    Request {
        caller,
        target: "",
        action: Action::Run,
        object: None,
        script,
        params,
        now,
        chain,
    }
}

/// The request's context (only the fields the candidates read): `script`,
/// `params`, `params_json`, `now`, `origin` and `chain`.
fn cedar_context(env: &Env, req: &Request, needs: Needs) -> Result<Context, PolicyError> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
    if needs.ctx_script {
        pairs.push((
            "script".to_string(),
            RestrictedExpression::new_string(req.script.to_string()),
        ));
    }
    if needs.ctx_params {
        pairs.push((
            "params".to_string(),
            RestrictedExpression::new_entity_uid(env.params_uid.clone()),
        ));
    }
    if needs.ctx_params_json {
        pairs.push((
            "params_json".to_string(),
            RestrictedExpression::new_string(req.params.to_string()),
        ));
    }
    if needs.ctx_now {
        pairs.push(("now".to_string(), RestrictedExpression::new_long(req.now)));
    }
    if needs.ctx_chain {
        let caller = [req.caller.to_string()];
        let chain = if req.chain.is_empty() {
            &caller[..]
        } else {
            req.chain
        };
        pairs.push((
            "origin".to_string(),
            RestrictedExpression::new_string(chain[0].clone()),
        ));
        pairs.push((
            "chain".to_string(),
            RestrictedExpression::new_set(
                chain
                    .iter()
                    .map(|p| RestrictedExpression::new_string(p.clone())),
            ),
        ));
    }
    if pairs.is_empty() {
        Ok(Context::empty())
    } else {
        Context::from_pairs(pairs).map_err(internal)
    }
}
