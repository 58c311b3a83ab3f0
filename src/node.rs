//! A running keel control node: its store, its identity, its bootstrap state and, once it
//! belongs to a cluster, its Raft node.
//!
//! A node's identity (uid, cluster name, peer secret) is written to `identity.json` in the
//! data directory the moment the node gets one, before Raft starts; on restart its presence
//! means "member of a cluster: start Raft and serve". Without it the node is idle and waits
//! for bootstrap: an API call (`create_cluster`, `join_cluster`) or, in auto mode, the
//! embedded default (a single-node cluster) or `--join`.
//!
//! Joining takes two steps. `POST /v1/cluster/join` to any member, with the cluster
//! credentials, reserves a uid through the log and returns the peer secret. The joiner writes
//! its identity (marked as a join still pending), starts Raft and asks the leader, through any
//! member and authenticated by the secret, to add it as a learner, wait until it has caught up
//! and promote it to voter ([`keel_raft::RaftNode::join_through`]). Because the pending join
//! is on disk and the second step needs no credentials, a joiner restarted in between finishes
//! its join instead of waiting forever as a node nobody added. (`POST /v1/cluster/members`,
//! the second step of earlier builds, is still served for joiners of those builds.)
//!
//! Nodes are often started together, the joiners before the node that creates the cluster is
//! up: both steps ask again, for up to [`JOIN_PATIENCE`], while members cannot be reached,
//! have no leader yet or are busy with another membership change.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use keel_raft::service::RaftSlot;
use keel_raft::RaftNode;
use keel_storage::Store;
use serde::Deserialize;
use serde::Serialize;

use crate::auth;
use crate::config::Settings;
use crate::domain;
use crate::domain::cluster::ClusterCommand;
use crate::domain::cluster::ClusterConfig;
use crate::domain::cluster::ClusterReply;
use crate::domain::cluster::Credentials;
use crate::domain::Command;
use crate::domain::Reply;
use crate::lessor::Lessor;
use crate::Error;

/// What a node must remember about itself to rejoin its cluster after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u64,
    pub cluster_name: String,
    pub secret: String,
    /// Set by `create_cluster` until the cluster's first command is committed, so that a crash
    /// in between finishes the creation on restart instead of leaving a cluster without its
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_init: Option<PendingInit>,
    /// Set by `join_cluster` until the cluster has added this node as a voter, so that a
    /// restart in between finishes the join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_join: Option<PendingJoin>,
}

/// The members a joining node asks to be added through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingJoin {
    pub members: Vec<String>,
}

/// How long a join keeps asking members that cannot be reached, have no leader or are busy
/// with another membership change.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);

/// The pause between rounds of asking every member for a uid.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What `create_cluster` still has to commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInit {
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapState {
    Idle,
    Initiated,
    CreatingCluster,
    JoiningCluster,
    RecoveringCluster,
    Error,
    Completed,
}

/// `bootstrap_status` of `GET /v1/bootstrap`.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapStatus {
    pub state: BootstrapState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<serde_json::Value>,
    /// After a join that failed once the node had its uid: the members a restart asks again
    /// (its identity keeps them), for the requests it cannot serve meanwhile.
    #[serde(skip)]
    pub rejoins_through: Option<Vec<String>>,
}

impl BootstrapStatus {
    fn enter(&mut self, state: BootstrapState) {
        if self.start_time.is_none() || state == BootstrapState::Initiated {
            self.start_time = Some(now_rfc3339());
        }
        self.state = state;
        self.end_time = None;
        self.error_code = None;
        self.error_details = None;
        self.rejoins_through = None;
    }
}

/// A bootstrap that failed, with the seed's error code.
#[derive(Debug)]
pub struct BootstrapError {
    pub code: &'static str,
    pub message: String,
}

impl BootstrapError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What the caller of a bootstrap action asked for, validated.
#[derive(Debug, Clone)]
pub enum BootstrapPlan {
    Create {
        name: String,
        credentials: Option<(String, String)>,
    },
    Join {
        members: Vec<String>,
        username: String,
        password: String,
    },
}

/// The answer of `POST /v1/cluster/join`.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinGrant {
    pub uid: u64,
    pub cluster_name: String,
    pub secret: String,
}

/// The body of `POST /v1/cluster/members`.
#[derive(Debug, Deserialize)]
pub struct MemberRequest {
    pub uid: u64,
    pub addr: String,
}

pub struct Node {
    pub settings: Settings,
    store: Store,
    raft: RaftSlot,
    status: Mutex<BootstrapStatus>,
    pub verifier: auth::Verifier,
    pub lessor: Arc<Lessor>,
    /// Client for calls to other nodes' REST APIs (joins, requests relayed to the leader).
    pub http: reqwest::Client,
    pub started: Instant,
    /// The state machine Raft applies; the API reads its broker cache.
    pub domain: Arc<domain::Domain>,
    /// The cluster's credentials, fixed by its creation: read once, not on every request.
    credentials: std::sync::OnceLock<Option<Credentials>>,
    /// Set once the node is told to stop: requests that wait for changes end then.
    stopping: tokio::sync::watch::Sender<bool>,
}

fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Node {
    /// Tells the requests that wait for changes (watches, long polls) to end: the node is
    /// stopping, and they would otherwise hold it up for as long as they wait.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Node::stop`] was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            // An error means the node is gone, which is stopped too.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// Opens the node's store and, if it already belongs to a cluster, starts its Raft.
    pub async fn open(settings: Settings) -> Result<Arc<Self>, String> {
        let http = keel_raft::network::node_to_node_client(settings.raft.peer_source_ip)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let store = Store::open(&settings.data_dir).map_err(|e| {
            format!(
                "cannot open the data directory {}: {e}",
                settings.data_dir.display()
            )
        })?;
        let node = Arc::new(Self {
            settings,
            store,
            raft: RaftSlot::default(),
            status: Mutex::new(BootstrapStatus {
                state: BootstrapState::Idle,
                start_time: None,
                end_time: None,
                error_code: None,
                error_details: None,
                rejoins_through: None,
            }),
            verifier: auth::Verifier::default(),
            lessor: Arc::default(),
            http,
            started: Instant::now(),
            domain: Arc::default(),
            credentials: std::sync::OnceLock::new(),
            stopping: tokio::sync::watch::Sender::new(false),
        });
        if let Some(identity) = node.read_identity()? {
            let settled = identity.pending_join.is_none() && identity.pending_init.is_none();
            if settled && !node.store.holds_raft_state().map_err(|e| e.to_string())? {
                // A voter that forgot its log and its vote could help elect a leader that lacks
                // committed writes.
                return Err(format!(
                    "{} says this node is member {} of a cluster, but its store is empty (lost \
                     or wiped): put the store back; or remove node {} from the cluster (POST \
                     /v1/nodes/{}/actions/remove), empty the directory and join the node again",
                    node.identity_path().display(),
                    identity.uid,
                    identity.uid,
                    identity.uid
                ));
            }
            node.set_state(BootstrapState::RecoveringCluster);
            node.start_raft(&identity).await.map_err(|e| e.message)?;
            if identity.pending_join.is_some() {
                // The leader adds this node by reaching it, so the join finishes while the
                // node serves.
                node.set_state(BootstrapState::JoiningCluster);
                let joining = node.clone();
                tokio::spawn(async move {
                    let joined = joining.finish_join(identity).await;
                    joining.finish(joined);
                });
                return Ok(node);
            }
            let recovered = match identity.pending_init.clone() {
                Some(pending) => node.finish_creation(identity, pending).await,
                None => Ok(()),
            };
            node.finish(recovered);
        } else if node.store.holds_raft_state().map_err(|e| e.to_string())? {
            // Started afresh, it would take a new uid and secret over a log that votes as
            // another member's: two leaders, or one process counted as two voters.
            return Err(format!(
                "{} holds a member's Raft log and state but no identity.json: put that node's \
                 identity.json back; or remove that node from the cluster (POST \
                 /v1/nodes/UID/actions/remove), empty the directory and join the node again",
                node.settings.data_dir.display()
            ));
        }
        Ok(node)
    }

    fn identity_path(&self) -> PathBuf {
        self.settings.data_dir.join("identity.json")
    }

    fn read_identity(&self) -> Result<Option<Identity>, String> {
        let path = self.identity_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                // Earlier builds left the file readable by every local user.
                let private = std::fs::Permissions::from_mode(0o600);
                if let Err(err) = std::fs::set_permissions(&path, private) {
                    tracing::warn!(%err, "cannot make {} private to keel's user", path.display());
                }
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| format!("{} is corrupt: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn write_identity(&self, identity: &Identity) -> Result<(), BootstrapError> {
        let path = self.identity_path();
        let partial = path.with_extension("json.partial");
        let write = || -> std::io::Result<()> {
            // Only the node's own user may read the cluster secret it holds.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            // A partial file left by an earlier build keeps its mode through `open`.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            serde_json::to_writer_pretty(&file, identity)?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)?;
            std::fs::File::open(&self.settings.data_dir)?.sync_all()
        };
        write().map_err(|e| {
            BootstrapError::new(
                "path_error",
                format!("cannot write {}: {e}", path.display()),
            )
        })
    }

    async fn start_raft(&self, identity: &Identity) -> Result<Arc<RaftNode>, BootstrapError> {
        let raft = RaftNode::start(
            identity.uid,
            &self.store,
            self.domain.clone(),
            identity.secret.clone(),
            self.settings.raft.clone(),
        )
        .await
        .map_err(|e| BootstrapError::new("internal_error", e.to_string()))?;
        let _ = self.raft.set(raft.clone());
        Ok(raft)
    }

    /// The node's Raft, or an error saying the node is not bootstrapped yet.
    pub fn raft(&self) -> Result<&Arc<RaftNode>, Error> {
        self.raft
            .get()
            .ok_or_else(|| keel_raft::Error::NotInitialized.into())
    }

    pub fn raft_slot(&self) -> RaftSlot {
        self.raft.clone()
    }

    pub fn is_member(&self) -> bool {
        self.raft.get().is_some()
    }

    pub fn store_size(&self) -> u64 {
        self.store.disk_usage()
    }

    pub fn status(&self) -> BootstrapStatus {
        self.status.lock().expect("bootstrap status").clone()
    }

    fn set_state(&self, state: BootstrapState) {
        self.status.lock().expect("bootstrap status").enter(state);
    }

    fn finish(&self, result: Result<(), BootstrapError>) {
        let mut status = self.status.lock().expect("bootstrap status");
        status.end_time = Some(now_rfc3339());
        match result {
            Ok(()) => status.state = BootstrapState::Completed,
            Err(err) => {
                tracing::error!(code = err.code, message = %err.message, "bootstrap failed");
                status.state = BootstrapState::Error;
                status.error_code = Some(err.code.to_string());
                status.error_details = Some(serde_json::json!({ "message": err.message }));
            }
        }
    }

    /// Refuses a bootstrap call unless the node is idle or its last bootstrap failed; checked
    /// before the call's body, whose errors would not matter.
    pub fn bootstrap_refusal(&self) -> Result<(), Error> {
        self.refuse_bootstrap(&self.status.lock().expect("bootstrap status"))
    }

    fn refuse_bootstrap(&self, status: &BootstrapStatus) -> Result<(), Error> {
        let state = status.state;
        let (code, message) = if self.is_member() || state == BootstrapState::Completed {
            (
                "already_bootstrapped",
                "this node already belongs to a cluster; to bootstrap it anew, stop it and empty its data directory".to_string(),
            )
        } else if matches!(state, BootstrapState::Idle | BootstrapState::Error) {
            return Ok(());
        } else {
            let state = serde_json::to_value(state).unwrap_or_default();
            let message = format!(
                "a bootstrap is already running ({}); poll GET /v1/bootstrap until it is completed or error",
                state.as_str().unwrap_or_default()
            );
            ("bootstrap_in_progress", message)
        };
        Err(Error::Conflict {
            code,
            message,
            details: serde_json::json!({ "state": state }),
        })
    }

    /// Starts a bootstrap in the background; refused unless the node is idle or failed.
    pub fn begin_bootstrap(self: &Arc<Self>, plan: BootstrapPlan) -> Result<(), Error> {
        {
            let mut status = self.status.lock().expect("bootstrap status");
            self.refuse_bootstrap(&status)?;
            // Under the same lock: of two bootstrap calls at once, one is refused.
            status.enter(BootstrapState::Initiated);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let result = match plan {
                BootstrapPlan::Create { name, credentials } => {
                    node.create_cluster(name, credentials).await
                }
                BootstrapPlan::Join {
                    members,
                    username,
                    password,
                } => node.join_cluster(&members, &username, &password).await,
            };
            node.finish(result);
        });
        Ok(())
    }

    /// Whether the address this node advertises is an unspecified one (`0.0.0.0`, `[::]`),
    /// as it is when it listens on one without `--advertise`: no other node reaches it there.
    fn advertises_no_address(&self) -> bool {
        self.settings
            .advertise
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_unspecified())
    }

    async fn create_cluster(
        &self,
        name: String,
        credentials: Option<(String, String)>,
    ) -> Result<(), BootstrapError> {
        self.set_state(BootstrapState::CreatingCluster);
        if self.advertises_no_address() {
            tracing::warn!(
                advertise = %self.settings.advertise,
                "this address goes into the cluster's membership, where no other node can \
                 reach it: to join other nodes later, create the cluster from an empty data \
                 directory with --advertise HOST:PORT"
            );
        }
        let credentials = match credentials {
            Some((username, password)) => Some(Credentials {
                username,
                password_hash: auth::hash_password(&password)
                    .map_err(|e| BootstrapError::new("internal_error", e))?,
            }),
            None => None,
        };
        let pending = PendingInit { credentials };
        let identity = Identity {
            uid: 1,
            cluster_name: name,
            secret: uuid::Uuid::new_v4().simple().to_string(),
            pending_init: Some(pending.clone()),
            pending_join: None,
        };
        self.write_identity(&identity)?;
        self.start_raft(&identity).await?;
        self.finish_creation(identity, pending).await
    }

    /// Makes this node the founding voter and commits the cluster's first command, then
    /// records that the creation is done. Safe to repeat after a crash at any point.
    async fn finish_creation(
        &self,
        mut identity: Identity,
        pending: PendingInit,
    ) -> Result<(), BootstrapError> {
        let raft = self
            .raft()
            .map_err(|e| BootstrapError::new("internal_error", e.to_string()))?;
        if !raft.is_initialized().await {
            raft.initialize(self.settings.advertise.clone())
                .await
                .map_err(|e| BootstrapError::new("internal_error", e.to_string()))?;
        }
        let command = Command::Cluster(ClusterCommand::Init {
            name: identity.cluster_name.clone(),
            credentials: pending.credentials,
            secret: identity.secret.clone(),
            founder: identity.uid,
        });
        match self.propose(&command, None).await {
            Ok(Reply::Cluster(ClusterReply::Initialized | ClusterReply::AlreadyInitialized)) => {}
            Ok(other) => {
                return Err(BootstrapError::new(
                    "internal_error",
                    format!("unexpected reply to cluster init: {other:?}"),
                ))
            }
            Err(e) => return Err(BootstrapError::new("internal_error", e.to_string())),
        }
        identity.pending_init = None;
        self.write_identity(&identity)
    }

    async fn join_cluster(
        &self,
        members: &[String],
        username: &str,
        password: &str,
    ) -> Result<(), BootstrapError> {
        self.set_state(BootstrapState::JoiningCluster);
        let advertised = &self.settings.advertise;
        if self.advertises_no_address() {
            return Err(BootstrapError::new(
                "config_error",
                format!(
                    "this node advertises {advertised}, which other nodes cannot reach it at; \
                     start it with --advertise HOST:PORT, an address they can"
                ),
            ));
        }
        // Asked to join itself, a node would wait for itself for the whole join's patience.
        let members: Vec<String> = members
            .iter()
            .filter(|member| *member != advertised)
            .cloned()
            .collect();
        if members.is_empty() {
            return Err(BootstrapError::new(
                "config_error",
                format!(
                    "the only member given to join through is this node itself ({advertised}); \
                     give the address of a node of the cluster to join"
                ),
            ));
        }
        let (grant, granted_by) = self.reserve_uid(&members, username, password).await?;
        // The member that granted the uid is asked first: it surely knows the secret.
        let mut members = members;
        members.sort_by_key(|member| *member != granted_by);
        let identity = Identity {
            uid: grant.uid,
            cluster_name: grant.cluster_name,
            secret: grant.secret,
            pending_init: None,
            pending_join: Some(PendingJoin { members }),
        };
        self.write_identity(&identity)?;
        self.start_raft(&identity).await?;
        self.finish_join(identity).await
    }

    /// The first step of a join: a uid and the peer secret from any of `members` (returned
    /// with the member that granted them), asking each in turn, round after round, while any
    /// of them may yet answer (see [`request_uid`]) and [`JOIN_PATIENCE`] lasts. Wrong
    /// credentials end the join at once.
    async fn reserve_uid(
        &self,
        members: &[String],
        username: &str,
        password: &str,
    ) -> Result<(JoinGrant, String), BootstrapError> {
        let client = keel_raft::network::node_to_node_client(self.settings.raft.peer_source_ip)
            .build()
            .map_err(|e| BootstrapError::new("internal_error", e.to_string()))?;
        let auth = auth::basic_header(username, password);
        let body = serde_json::json!({ "addr": self.settings.advertise });
        let deadline = Instant::now() + JOIN_PATIENCE;
        let mut last_error = BootstrapError::new("config_error", "no cluster nodes were given");
        let mut round = 0u64;
        loop {
            let mut may_answer = false;
            for member in members {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let call = client
                    .post(format!("http://{member}/v1/cluster/join"))
                    .timeout(remaining.min(keel_raft::node::JOIN_CALL))
                    .header("authorization", &auth)
                    .json(&body);
                match request_uid(call, member).await {
                    Ok(grant) => return Ok((grant, member.clone())),
                    Err(err) if err.code == "access_denied" => return Err(err),
                    Err(err) => {
                        // Once when it starts, then every ~5 s: a joiner may wait minutes.
                        if round % 10 == 0 {
                            tracing::warn!(%member, error = %err.message, "cannot join through this member yet");
                        }
                        may_answer |= err.code == "connect_error";
                        last_error = err;
                    }
                }
            }
            if Instant::now() + JOIN_RETRY_PAUSE >= deadline {
                last_error.message = format!(
                    "no member granted a uid within {JOIN_PATIENCE:?}; the last answer: {}. Check \
                     that the addresses to join are members of a running cluster and reachable \
                     from this node, then ask again",
                    last_error.message
                );
                return Err(last_error);
            }
            if !may_answer {
                return Err(last_error);
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            round += 1;
        }
    }

    /// The second step of a join: has the cluster add this node as a voter, then clears the
    /// pending join from its identity.
    async fn finish_join(&self, mut identity: Identity) -> Result<(), BootstrapError> {
        let Some(pending) = identity.pending_join.take() else {
            return Ok(());
        };
        let raft = self
            .raft()
            .map_err(|e| BootstrapError::new("internal_error", e.to_string()))?;
        let joined = raft
            .join_through(
                &pending.members,
                self.settings.advertise.clone(),
                JOIN_PATIENCE,
            )
            .await;
        if joined.is_err() {
            let mut status = self.status.lock().expect("bootstrap status");
            status.rejoins_through = Some(pending.members.clone());
        }
        match joined {
            Ok(()) => self.write_identity(&identity),
            // Refused for good (an earlier build, an address the leader cannot reach...): the
            // message says what to change.
            Err(err @ keel_raft::Error::Membership(_)) => Err(BootstrapError::new(
                "config_error",
                format!("the cluster refused to add node {}: {err}", identity.uid),
            )),
            Err(err) => Err(BootstrapError::new(
                "connect_error",
                format!(
                    "node {} got its uid but the cluster did not add it: {err}. It keeps its \
                     uid and asks {} again when restarted",
                    identity.uid,
                    pending.members.join(", ")
                ),
            )),
        }
    }

    /// Refuses to serve a cluster that has no credentials (the loopback-only default) on an
    /// address other machines reach, and says so when settings given to a node that already
    /// has a cluster do not apply to it: bootstrap credentials, or an address other than the
    /// one the cluster knows it at.
    pub async fn check_settings_fit_cluster(&self) -> Result<(), String> {
        let Ok(raft) = self.raft() else {
            return Ok(());
        };
        // The Raft core loads the membership from the log once it runs.
        let loaded = |m: &keel_raft::types::RaftMetrics| {
            m.membership_config.membership().nodes().next().is_some()
        };
        let metrics = raft
            .raft()
            .wait(Some(Duration::from_secs(2)))
            .metrics(loaded, "the membership to load")
            .await
            .unwrap_or_else(|_| raft.metrics());
        let known_at = metrics
            .membership_config
            .membership()
            .get_node(&raft.id())
            .map(|member| member.addr.clone());
        if let Some(known_at) = known_at.filter(|addr| *addr != self.settings.advertise) {
            tracing::warn!(
                "the cluster knows this node (uid {}) at {known_at}, not at {}: the others will \
                 not reach it. Start it with --advertise {known_at}, or remove it and join it \
                 again at the new address",
                raft.id(),
                self.settings.advertise
            );
        }
        if self.settings.user.is_some() {
            tracing::info!(
                "--user and --password only bootstrap a cluster; this node's cluster keeps the \
                 credentials it was created with"
            );
        }
        let open_cluster = matches!(self.credentials(), Ok(Some(None)));
        if open_cluster && !self.settings.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {}: this node's cluster was created on loopback without \
                 credentials, so anyone who reaches the address could read and write it. Listen \
                 on loopback only, or create a cluster with --user and --password and move the \
                 data to it",
                self.settings.listen
            ));
        }
        Ok(())
    }

    /// Bootstraps without an API call, as `--bootstrap auto` asks.
    pub fn auto_bootstrap(self: &Arc<Self>) -> Result<(), String> {
        if self.is_member() {
            return Ok(());
        }
        let settings = &self.settings;
        let credentials = settings.user.clone().zip(settings.password.clone());
        let plan = if settings.join.is_empty() {
            if credentials.is_none() && !settings.listen.ip().is_loopback() {
                return Err(format!(
                    "refusing to create a cluster without credentials on {}: set --user and --password \
                     (KEEL_USER/KEEL_PASSWORD), or listen on loopback only",
                    settings.listen
                ));
            }
            BootstrapPlan::Create {
                name: settings.cluster_name.clone(),
                credentials,
            }
        } else {
            let (username, password) = credentials
                .ok_or("--join needs the cluster credentials: set --user and --password")?;
            BootstrapPlan::Join {
                members: settings.join.clone(),
                username,
                password,
            }
        };
        self.begin_bootstrap(plan).map_err(|e| e.to_string())
    }

    /// Commits `command` through the cluster's leader and decodes the reply.
    pub async fn propose(
        &self,
        command: &Command,
        request_id: Option<String>,
    ) -> Result<Reply, Error> {
        let bytes = bincode::serialize(command).map_err(|e| Error::Internal(e.to_string()))?;
        let reply = self.raft()?.propose(bytes, request_id).await?;
        match bincode::deserialize(&reply) {
            Ok(reply) => Ok(reply),
            Err(e) => Err(Error::Internal(format!("undecodable reply: {e}"))),
        }
    }

    /// Why a member serves nothing yet: it has not applied its cluster's creation, because
    /// that is still under way or, for a node whose bootstrap failed after it got its uid,
    /// until it is restarted.
    pub fn not_ready(&self) -> Error {
        let status = self.status();
        match (status.state, self.raft()) {
            (BootstrapState::Error, Ok(raft)) => {
                // A restart asks the same members again: if they are gone, it cannot finish.
                let asks = status
                    .rejoins_through
                    .map(|members| format!(" (a join asks {} again)", members.join(", ")))
                    .unwrap_or_default();
                Error::Unavailable {
                    code: "not_bootstrapped",
                    message: format!(
                        "this node holds uid {} of a cluster but its bootstrap did not finish \
                         ({}; see GET /v1/bootstrap): restart it to finish{asks}, or empty its \
                         data directory to start over",
                        raft.id(),
                        status.error_code.as_deref().unwrap_or("error"),
                    ),
                    retry_after: Duration::from_secs(5),
                }
            }
            _ => keel_raft::Error::NotInitialized.into(),
        }
    }

    /// The cluster's credentials (`Some(None)` for the loopback-only default), or `None` while
    /// this node has not applied the cluster's creation.
    pub fn credentials(&self) -> Result<Option<&Option<Credentials>>, Error> {
        if let Some(credentials) = self.credentials.get() {
            return Ok(Some(credentials));
        }
        Ok(self
            .cluster_config()?
            .map(|config| self.credentials.get_or_init(|| config.credentials)))
    }

    /// The replicated cluster config as this node has applied it.
    pub fn cluster_config(&self) -> Result<Option<ClusterConfig>, Error> {
        match self.raft.get() {
            Some(raft) => Ok(domain::cluster::config(&raft.reader())?),
            None => Ok(None),
        }
    }
}

/// Sends `call`, a request for a uid, to `member`, mapping failures to the seed's error codes:
/// `connect_error` for what may pass (no answer, a member with no cluster or leader yet, a
/// server error), which the caller asks again about; `access_denied` for wrong credentials;
/// `config_error` for any other refusal (such as a `--join` address that is not keel's).
async fn request_uid(
    call: reqwest::RequestBuilder,
    member: &str,
) -> Result<JoinGrant, BootstrapError> {
    let response = call
        .send()
        .await
        .map_err(|e| BootstrapError::new("connect_error", format!("cannot reach {member}: {e}")))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(BootstrapError::new(
            "access_denied",
            format!(
                "{member} refused the credentials: give the cluster's user and password \
                 (--user and --password, or the join_cluster body's credentials) and join again"
            ),
        ));
    }
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        let code = if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            "connect_error"
        } else {
            "config_error"
        };
        return Err(BootstrapError::new(
            code,
            format!("{member} answered {status}: {}", refusal(&body)),
        ));
    }
    response
        .json()
        .await
        .map_err(|e| BootstrapError::new("connect_error", format!("bad answer from {member}: {e}")))
}

/// What a member's error answer says: its `message` (and `error_code`) when it is keel's JSON
/// error, else the body as text.
fn refusal(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct KeelError {
        error_code: Option<String>,
        message: String,
    }
    match serde_json::from_slice::<KeelError>(body) {
        Ok(KeelError {
            error_code: Some(code),
            message,
        }) => format!("{message} ({code})"),
        Ok(KeelError { message, .. }) => message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_409_311_189);
        assert_eq!(rfc3339(t), "2014-08-29T11:19:49Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
