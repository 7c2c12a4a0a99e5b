//! The catalog: regions, games and their versions, warm targets, tenants and their API keys.
//! Stored in SQLite, read from an in-memory copy (every placement reads it; only operators
//! write it). Writes go to the database first and then to the copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use api::broker::{
    ApiKeyView, GamePacking, GameSpec, GameVersionSpec, RegionSpec, TenantSpec, TenantView, WarmTargetSpec,
};
use api::rack::DeploymentSpec;
use rusqlite::{OptionalExtension, params};
use service_kit::auth::{hash_token, new_token};
use service_kit::time::now_ms;

use crate::db::Db;
use crate::error::BrokerError;
use crate::scheduler;

/// Sessions per second a tenant gets when its spec names no rate.
pub const DEFAULT_TENANT_RATE: u32 = 200;
const MAX_TENANT_RATE: u32 = 1_000_000;

/// A game with its versions and warm targets.
#[derive(Debug, Clone, PartialEq)]
pub struct GameEntry {
    pub spec: GameSpec,
    pub versions: BTreeMap<String, GameVersionSpec>,
    pub warm_targets: BTreeMap<String, WarmTargetSpec>,
}

impl GameEntry {
    /// The version new sessions get, with its spec.
    pub fn current(&self) -> Option<(&str, &GameVersionSpec)> {
        let v = self.spec.current_version.as_deref()?;
        self.versions.get_key_value(v).map(|(k, s)| (k.as_str(), s))
    }
}

/// A game's current deployment, as the capacity index and the pools need it.
#[derive(Debug, Clone)]
pub struct CurrentDeployment {
    pub game: String,
    pub deployment: String,
    pub millicores: u64,
    pub memory_mib: u64,
}

#[derive(Debug, Clone)]
struct Tenant {
    name: String,
    rate_per_s: u32,
    keys: Vec<String>,
}

#[derive(Default)]
struct Cache {
    regions: BTreeMap<String, String>,
    games: BTreeMap<String, GameEntry>,
    tenants: BTreeMap<String, Tenant>,
    /// Key hash -> (key id, tenant).
    keys: HashMap<String, (String, String)>,
}

/// The catalog and its copy in memory.
pub struct Catalog {
    db: Arc<Db>,
    cache: RwLock<Cache>,
}

/// The deployment id of a game version on every rack: `<game>-<version>` with characters that
/// are not allowed in ids replaced by `-`.
pub fn deployment_id(game: &str, version: &str) -> String {
    let v: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("{game}-{}", v.trim_matches('-'))
}

fn is_valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_id(what: &'static str, code: &'static str, id: &str) -> Result<(), BrokerError> {
    if api::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(BrokerError::invalid(
            code,
            format!("{what} id {id:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'"),
        ))
    }
}

impl Catalog {
    /// Loads the catalog from the database.
    pub fn load(db: Arc<Db>) -> Result<Catalog, BrokerError> {
        let cache = db.read(|conn| -> Result<Cache, BrokerError> {
            let mut cache = Cache::default();
            let mut stmt = conn.prepare("SELECT id, description FROM regions")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (id, d) = row?;
                cache.regions.insert(id, d);
            }
            let mut stmt = conn.prepare("SELECT id, spec FROM games")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (id, spec) = row?;
                let spec: GameSpec = serde_json::from_str(&spec)?;
                cache
                    .games
                    .insert(id, GameEntry { spec, versions: BTreeMap::new(), warm_targets: BTreeMap::new() });
            }
            let mut stmt = conn.prepare("SELECT game, version, spec FROM game_versions")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })? {
                let (game, version, spec) = row?;
                if let Some(g) = cache.games.get_mut(&game) {
                    g.versions.insert(version, serde_json::from_str(&spec)?);
                }
            }
            let mut stmt = conn.prepare("SELECT game, region, warm, auto FROM warm_targets")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            for row in rows {
                let (game, region, warm, auto) = row?;
                let auto = auto.map(|a| serde_json::from_str(&a)).transpose()?;
                if let Some(g) = cache.games.get_mut(&game) {
                    g.warm_targets.insert(region, WarmTargetSpec { warm, auto });
                }
            }
            let mut stmt = conn.prepare("SELECT id, name, rate_per_s FROM tenants")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?))
            })? {
                let (id, name, rate_per_s) = row?;
                cache.tenants.insert(id, Tenant { name, rate_per_s, keys: Vec::new() });
            }
            let mut stmt = conn
                .prepare("SELECT id, tenant, key_hash FROM api_keys WHERE revoked = 0 ORDER BY created_ms")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })? {
                let (id, tenant, hash) = row?;
                if let Some(t) = cache.tenants.get_mut(&tenant) {
                    t.keys.push(id.clone());
                }
                cache.keys.insert(hash, (id, tenant));
            }
            Ok(cache)
        })?;
        Ok(Catalog { db, cache: RwLock::new(cache) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    // --- regions ---------------------------------------------------------------------------

    /// Creates or updates a region.
    pub fn put_region(&self, id: &str, spec: &RegionSpec) -> Result<(), BrokerError> {
        valid_id("region", "invalid_region", id)?;
        if spec.description.len() > 500 {
            return Err(BrokerError::invalid(
                "invalid_description",
                "description must be at most 500 characters",
            ));
        }
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO regions (id, description, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET description = excluded.description",
                params![id, spec.description, now_ms() as i64],
            )?;
            Ok(())
        })?;
        self.write().regions.insert(id.to_string(), spec.description.clone());
        Ok(())
    }

    /// Regions and their descriptions.
    pub fn regions(&self) -> BTreeMap<String, String> {
        self.read().regions.clone()
    }

    pub fn has_region(&self, id: &str) -> bool {
        self.read().regions.contains_key(id)
    }

    // --- games -----------------------------------------------------------------------------

    /// Creates or updates a game. A `current_version` must name an existing version.
    pub fn put_game(&self, id: &str, spec: &GameSpec) -> Result<(), BrokerError> {
        valid_id("game", "invalid_game", id)?;
        spec.validate()?;
        if let Some(v) = &spec.current_version {
            let known = self.read().games.get(id).is_some_and(|g| g.versions.contains_key(v));
            if !known {
                return Err(BrokerError::conflict(
                    "unknown_version",
                    format!("game {id:?} has no version {v:?}: PUT /v1/games/{id}/versions/{v} first"),
                ));
            }
        }
        let text = serde_json::to_string(spec)?;
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO games (id, spec, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec",
                params![id, text, now_ms() as i64],
            )?;
            Ok(())
        })?;
        let mut cache = self.write();
        let entry = cache.games.entry(id.to_string()).or_insert_with(|| GameEntry {
            spec: spec.clone(),
            versions: BTreeMap::new(),
            warm_targets: BTreeMap::new(),
        });
        entry.spec = spec.clone();
        Ok(())
    }

    pub fn game(&self, id: &str) -> Option<GameEntry> {
        self.read().games.get(id).cloned()
    }

    pub fn games(&self) -> BTreeMap<String, GameEntry> {
        self.read().games.clone()
    }

    /// Adds a version to a game. The same spec again is a no-op (returns false); another spec
    /// for an existing version is refused: a running instance never changes under a version.
    pub fn put_version(
        &self,
        game: &str,
        version: &str,
        spec: &GameVersionSpec,
    ) -> Result<bool, BrokerError> {
        if !is_valid_version(version) {
            return Err(BrokerError::invalid(
                "invalid_version",
                format!("version {version:?} is not valid: 1-32 characters of a-z, 0-9, '.', '_', '-'"),
            ));
        }
        let Some(entry) = self.game(game) else {
            return Err(BrokerError::unknown(
                "unknown_game",
                format!("game {game:?} does not exist: PUT /v1/games/{game} first"),
            ));
        };
        if let Some(existing) = entry.versions.get(version) {
            if existing == spec {
                return Ok(false);
            }
            return Err(BrokerError::conflict(
                "version_immutable",
                format!("version {version:?} of {game:?} exists with another spec; publish a new version"),
            ));
        }
        let dep = deployment_id(game, version);
        if !api::ids::is_valid_id(&dep) {
            return Err(BrokerError::invalid(
                "invalid_version",
                format!("deployment id {dep:?} would be too long"),
            ));
        }
        if let Some(clash) = entry.versions.keys().find(|v| deployment_id(game, v) == dep) {
            return Err(BrokerError::conflict(
                "version_clash",
                format!("versions {clash:?} and {version:?} would share the deployment id {dep:?}"),
            ));
        }
        // The rack checks the rest when the deployment is put; these are the checks that need
        // no board.
        validate_version(spec)?;
        let text = serde_json::to_string(spec)?;
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO game_versions (game, version, spec, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![game, version, text, now_ms() as i64],
            )?;
            Ok(())
        })?;
        if let Some(g) = self.write().games.get_mut(game) {
            g.versions.insert(version.to_string(), spec.clone());
        }
        Ok(true)
    }

    /// Sets the warm target of a game in a region.
    pub fn set_warm_target(
        &self,
        game: &str,
        region: &str,
        spec: &WarmTargetSpec,
    ) -> Result<(), BrokerError> {
        spec.validate()?;
        if self.game(game).is_none() {
            return Err(BrokerError::unknown("unknown_game", format!("game {game:?} does not exist")));
        }
        if !self.has_region(region) {
            return Err(BrokerError::unknown("unknown_region", format!("region {region:?} does not exist")));
        }
        let auto = spec.auto.as_ref().map(serde_json::to_string).transpose()?;
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO warm_targets (game, region, warm, auto) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (game, region) DO UPDATE SET warm = excluded.warm, auto = excluded.auto",
                params![game, region, spec.warm, auto],
            )?;
            Ok(())
        })?;
        if let Some(g) = self.write().games.get_mut(game) {
            g.warm_targets.insert(region.to_string(), *spec);
        }
        Ok(())
    }

    // --- tenants ---------------------------------------------------------------------------

    pub fn create_tenant(&self, spec: &TenantSpec) -> Result<TenantView, BrokerError> {
        valid_id("tenant", "invalid_tenant", &spec.id)?;
        let rate = spec.rate_per_s.unwrap_or(DEFAULT_TENANT_RATE);
        if rate == 0 || rate > MAX_TENANT_RATE {
            return Err(BrokerError::invalid(
                "invalid_rate",
                format!("rate_per_s must be between 1 and {MAX_TENANT_RATE}"),
            ));
        }
        if self.read().tenants.contains_key(&spec.id) {
            return Err(BrokerError::conflict("tenant_exists", format!("tenant {:?} exists", spec.id)));
        }
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO tenants (id, name, rate_per_s, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![spec.id, spec.name, rate, now_ms() as i64],
            )?;
            Ok(())
        })?;
        let tenant = Tenant { name: spec.name.clone(), rate_per_s: rate, keys: Vec::new() };
        self.write().tenants.insert(spec.id.clone(), tenant);
        Ok(self.tenant(&spec.id).expect("just inserted"))
    }

    pub fn tenant(&self, id: &str) -> Option<TenantView> {
        self.read().tenants.get(id).map(|t| TenantView {
            id: id.to_string(),
            name: t.name.clone(),
            rate_per_s: t.rate_per_s,
            keys: t.keys.clone(),
        })
    }

    pub fn tenants(&self) -> Vec<TenantView> {
        let ids: Vec<String> = self.read().tenants.keys().cloned().collect();
        ids.iter().filter_map(|id| self.tenant(id)).collect()
    }

    /// Issues an API key for a tenant; the key is in the answer only.
    pub fn create_key(&self, tenant: &str) -> Result<ApiKeyView, BrokerError> {
        if !self.read().tenants.contains_key(tenant) {
            return Err(BrokerError::not_found("tenant", tenant));
        }
        let key = new_token("key");
        let hash = hash_token(&key);
        // The id is a prefix of the hash: enough to name the key, useless to guess it.
        let id = format!("k-{}", &hash[..12]);
        self.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "INSERT INTO api_keys (id, tenant, key_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, tenant, hash, now_ms() as i64],
            )?;
            Ok(())
        })?;
        let mut cache = self.write();
        cache.keys.insert(hash, (id.clone(), tenant.to_string()));
        if let Some(t) = cache.tenants.get_mut(tenant) {
            t.keys.push(id.clone());
        }
        Ok(ApiKeyView { id, tenant: tenant.to_string(), key: Some(key) })
    }

    /// Revokes a key at once.
    pub fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<ApiKeyView, BrokerError> {
        let changed = self.db.write(|tx| -> Result<usize, BrokerError> {
            Ok(tx.execute(
                "UPDATE api_keys SET revoked = 1 WHERE id = ?1 AND tenant = ?2 AND revoked = 0",
                params![key_id, tenant],
            )?)
        })?;
        if changed == 0 {
            return Err(BrokerError::not_found("api key", key_id));
        }
        let mut cache = self.write();
        cache.keys.retain(|_, (id, _)| id != key_id);
        if let Some(t) = cache.tenants.get_mut(tenant) {
            t.keys.retain(|k| k != key_id);
        }
        Ok(ApiKeyView { id: key_id.to_string(), tenant: tenant.to_string(), key: None })
    }

    /// The tenant and its rate for an API key, if the key is valid.
    pub fn tenant_for_key(&self, key: &str) -> Option<(String, u32)> {
        let cache = self.read();
        let (_, tenant) = cache.keys.get(&hash_token(key))?;
        Some((tenant.clone(), cache.tenants.get(tenant)?.rate_per_s))
    }

    // --- derived views ---------------------------------------------------------------------

    /// Every game's current deployment (read on every placement: no clone of the catalog).
    pub fn current_deployments(&self) -> Vec<CurrentDeployment> {
        self.read()
            .games
            .iter()
            .filter_map(|(game, entry)| {
                let (version, spec) = entry.current()?;
                Some(CurrentDeployment {
                    deployment: deployment_id(game, version),
                    game: game.clone(),
                    millicores: u64::from(spec.profile.millicores),
                    memory_mib: spec.profile.memory_mib,
                })
            })
            .collect()
    }

    /// The scheduler's view of a game (its current version decides the architectures).
    pub fn scheduler_game(&self, id: &str) -> Option<(scheduler::Game, String)> {
        let cache = self.read();
        let entry = cache.games.get(id)?;
        let (version, spec) = entry.current()?;
        let mut game = scheduler::Game::new(id);
        game.max_rtt_ms = entry.spec.max_rtt_ms;
        game.preferred_rtt_ms = entry.spec.preferred_rtt_ms;
        game.archs = spec.images.keys().cloned().collect();
        game.gpu_kind = entry.spec.gpu_kind.clone();
        game.packing = match entry.spec.packing {
            GamePacking::Fill => scheduler::Packing::Fill,
            GamePacking::Spread => scheduler::Packing::Spread,
        };
        Some((game, version.to_string()))
    }
}

/// The deployment a rack runs for a game version.
pub fn deployment_spec(game: &str, version: &str, spec: &GameVersionSpec, pool_size: u32) -> DeploymentSpec {
    DeploymentSpec {
        game: game.to_string(),
        version: version.to_string(),
        images: spec.images.clone(),
        profile: spec.profile.clone(),
        reset: spec.reset,
        launch: spec.launch.clone(),
        pool_size,
        env: spec.env.clone(),
        args: spec.args.clone(),
        privileged: spec.privileged,
        boot_timeout_s: spec.boot_timeout_s,
        constraints: spec.constraints.clone(),
    }
}

fn validate_version(spec: &GameVersionSpec) -> Result<(), BrokerError> {
    if spec.images.is_empty() {
        return Err(BrokerError::invalid("invalid_images", "images must name at least one architecture"));
    }
    for (arch, image) in &spec.images {
        if !["aarch64", "x86_64"].contains(&arch.as_str()) || image.trim().is_empty() {
            return Err(BrokerError::invalid(
                "invalid_images",
                format!("images: {arch:?} -> {image:?}: use aarch64 or x86_64 and a non-empty image"),
            ));
        }
    }
    if spec.profile.millicores == 0 || spec.profile.memory_mib < 16 {
        return Err(BrokerError::invalid(
            "invalid_profile",
            "profile needs millicores above 0 and memory_mib of at least 16",
        ));
    }
    if !(1..=3600).contains(&spec.boot_timeout_s) {
        return Err(BrokerError::invalid(
            "invalid_boot_timeout",
            "boot_timeout_s must be between 1 and 3600",
        ));
    }
    Ok(())
}

/// Reads a rack's stored credential hash (None: no credential issued).
pub fn rack_credential_hash(db: &Db, rack: &str) -> Result<Option<String>, BrokerError> {
    db.read(|conn| {
        Ok(conn
            .query_row("SELECT credential_hash FROM racks WHERE id = ?1", params![rack], |r| r.get(0))
            .optional()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(Arc::new(crate::db::test_db())).unwrap()
    }

    fn version() -> GameVersionSpec {
        serde_json::from_value(serde_json::json!({
            "images": {"x86_64": "img"},
            "profile": {"millicores": 500, "memory_mib": 256},
        }))
        .unwrap()
    }

    fn game() -> GameSpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn versions_are_immutable_and_current_must_exist() {
        let c = catalog();
        c.put_game("g", &game()).unwrap();
        let with_current = GameSpec { current_version: Some("1.0".into()), ..game() };
        assert!(matches!(
            c.put_game("g", &with_current),
            Err(BrokerError::Conflict { code: "unknown_version", .. })
        ));
        assert!(c.put_version("g", "1.0", &version()).unwrap());
        assert!(!c.put_version("g", "1.0", &version()).unwrap());
        let mut other = version();
        other.profile.millicores = 600;
        assert!(matches!(
            c.put_version("g", "1.0", &other),
            Err(BrokerError::Conflict { code: "version_immutable", .. })
        ));
        assert!(matches!(
            c.put_version("g", "1-0", &version()),
            Err(BrokerError::Conflict { code: "version_clash", .. })
        ));
        c.put_game("g", &with_current).unwrap();
        let (g, v) = c.scheduler_game("g").unwrap();
        assert_eq!(v, "1.0");
        assert!(g.archs.contains("x86_64"));
        assert_eq!(deployment_id("g", "1.0"), "g-1-0");
    }

    #[test]
    fn keys_resolve_to_their_tenant_until_revoked_and_survive_a_reload() {
        let db = Arc::new(crate::db::test_db());
        let c = Catalog::load(db.clone()).unwrap();
        c.create_tenant(&TenantSpec { id: "t1".into(), name: "T".into(), rate_per_s: Some(5) }).unwrap();
        assert!(matches!(
            c.create_tenant(&TenantSpec { id: "t1".into(), name: String::new(), rate_per_s: None }),
            Err(BrokerError::Conflict { .. })
        ));
        let key = c.create_key("t1").unwrap();
        let secret = key.key.clone().unwrap();
        assert_eq!(c.tenant_for_key(&secret), Some(("t1".into(), 5)));
        assert_eq!(Catalog::load(db.clone()).unwrap().tenant_for_key(&secret), Some(("t1".into(), 5)));
        c.revoke_key("t1", &key.id).unwrap();
        assert_eq!(c.tenant_for_key(&secret), None);
        assert_eq!(Catalog::load(db).unwrap().tenant_for_key(&secret), None);
        assert!(c.tenant_for_key("key_wrong").is_none());
    }

    #[test]
    fn warm_targets_need_a_known_game_and_region_and_survive_a_reload() {
        let c = catalog();
        c.put_game("g", &game()).unwrap();
        let fixed = WarmTargetSpec { warm: 2, auto: None };
        assert!(matches!(
            c.set_warm_target("g", "east", &fixed),
            Err(BrokerError::Unknown { code: "unknown_region", .. })
        ));
        c.put_region("east", &RegionSpec::default()).unwrap();
        c.set_warm_target("g", "east", &fixed).unwrap();
        assert_eq!(c.game("g").unwrap().warm_targets["east"], fixed);
        let auto = WarmTargetSpec { warm: 1, auto: Some(api::broker::AutoWarm { max: 9, safety: 2.0 }) };
        c.set_warm_target("g", "east", &auto).unwrap();
        assert_eq!(Catalog::load(c.db.clone()).unwrap().game("g").unwrap().warm_targets["east"], auto);
        let bad = WarmTargetSpec { warm: 5, auto: Some(api::broker::AutoWarm { max: 2, safety: 1.5 }) };
        assert!(matches!(
            c.set_warm_target("g", "east", &bad),
            Err(BrokerError::Invalid { code: "invalid_warm_target", .. })
        ));
    }
}
