//! The roles a user has, inherited ones included: the closure of the role graph, shared by
//! every identity provider.
//!
//! A role R's `roles` relation lists child roles; members of a child role are members of R.
//! Starting from the roles whose `users` relation holds the user, parents are followed
//! breadth-first with a visited set (a cycle ends), up to [`MAX_ROLES`] roles (a runaway
//! hierarchy cannot stall lookups; parse-server has no bound).

use std::collections::HashSet;
use std::future::Future;

/// Roles beyond this many per user are not followed.
pub const MAX_ROLES: usize = 10_000;

/// Every role reachable from `direct` through `parents_of` (which, given role ids, returns
/// the roles whose `roles` relation holds any of them), each once, in discovery order.
/// `T` is whatever a provider learns with each id (a name, or nothing).
pub async fn closure<T, E, F, Fut>(
    direct: Vec<(String, T)>,
    mut parents_of: F,
) -> Result<Vec<(String, T)>, E>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = Result<Vec<(String, T)>, E>>,
{
    let mut visited: HashSet<String> = HashSet::new();
    let mut found = Vec::new();
    let mut frontier = Vec::new();
    let mut add =
        |roles: Vec<(String, T)>, found: &mut Vec<(String, T)>, frontier: &mut Vec<String>| {
            for (id, payload) in roles {
                if visited.len() >= MAX_ROLES {
                    break;
                }
                if visited.insert(id.clone()) {
                    frontier.push(id.clone());
                    found.push((id, payload));
                }
            }
        };
    add(direct, &mut found, &mut frontier);
    while !frontier.is_empty() && found.len() < MAX_ROLES {
        let parents = parents_of(std::mem::take(&mut frontier)).await?;
        add(parents, &mut found, &mut frontier);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[tokio::test]
    async fn parents_are_followed_once_and_cycles_end() {
        // child -> parent -> grand -> child (a cycle), and a second path to grand.
        let parents: HashMap<&str, Vec<&str>> = HashMap::from([
            ("child", vec!["parent", "other"]),
            ("parent", vec!["grand"]),
            ("other", vec!["grand"]),
            ("grand", vec!["child"]),
        ]);
        let direct = vec![("child".to_owned(), ())];
        let all = closure::<(), (), _, _>(direct, |ids| {
            let found: Vec<(String, ())> = ids
                .iter()
                .flat_map(|id| parents.get(id.as_str()).cloned().unwrap_or_default())
                .map(|id| (id.to_owned(), ()))
                .collect();
            async move { Ok(found) }
        })
        .await
        .expect("no error");
        let ids: Vec<&str> = all.iter().map(|(id, ())| id.as_str()).collect();
        assert_eq!(ids, ["child", "parent", "other", "grand"]);
    }
}
