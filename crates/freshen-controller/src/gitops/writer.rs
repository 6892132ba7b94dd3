//! The one writer of each repository and branch: edits asked for within a
//! short window are committed together (a base move that rebuilt forty
//! images is one commit), pushed, and on a rejected push (someone else
//! pushed meanwhile) fetched again and re-applied on the new head, which
//! keeps their commit and ours. One flush at a time per repository and
//! branch; clones are bare, fetched shallow, and kept between flushes.
//!
//! libgit2 (the `git2` crate) does the git work, on blocking threads: the
//! release image has no `git` binary, and a library reports a rejected
//! push per reference rather than in text to parse.
//!
//! For `gitops: PullRequest` a batch is pushed to a branch of its own,
//! `freshen/<hash of the base branch and the edits>` (the same edits asked
//! again reach the same branch and its open pull request), and proposed
//! through the forge's API ([`super::forge`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_core::gitops::forge::{self as forge_api, Provider, PullRequest};
use freshen_core::gitops::{self, Edited, Field, Subject};
use freshen_core::image::ImageReference;
use git2::{
    CertificateCheckStatus, Cred, CredentialType, FetchOptions, FileMode, ObjectType, Oid,
    PushOptions, RemoteCallbacks, Repository, Signature, TreeWalkMode, TreeWalkResult,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Pushes tried before a flush gives up (each after a fetch and re-apply).
const PUSH_ATTEMPTS: u32 = 5;
/// Files searched under a source's path for the workload's manifest.
const MAX_FILES: usize = 2_000;
/// Largest file read.
const MAX_FILE_BYTES: usize = 1 << 20;

/// How freshen authenticates to one repository.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// None (a repository that takes anonymous pushes, as the tests' does).
    #[default]
    Anonymous,
    /// HTTPS basic authentication (a token as the password).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An SSH key, and the host keys to trust.
    Ssh {
        /// The private key (OpenSSH format).
        identity: String,
        /// `known_hosts` lines.
        known_hosts: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Anonymous => "Anonymous",
            Self::Basic { .. } => "Basic(..)",
            Self::Ssh { .. } => "Ssh(..)",
        })
    }
}

/// Which repository, branch and identity a batch goes to, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The repository's URL.
    pub url: String,
    /// The branch.
    pub branch: String,
    /// The Secret the credentials came from (`namespace/name`), so that
    /// edits pushed with different credentials never share a commit.
    pub identity: String,
    /// Pushed to the branch, or proposed to it.
    pub delivery: Delivery,
}

/// How a batch reaches its branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// A commit pushed to the branch (`gitops: Commit`).
    Push,
    /// A commit on a branch of its own, proposed as a pull request
    /// (`gitops: PullRequest`); promotions and reverts never share one.
    PullRequest {
        /// The forge's API.
        provider: Provider,
        /// Whether the batch puts old images back.
        revert: bool,
    },
}

/// What opening a pull request needs beyond the git credentials.
#[derive(Clone, Default)]
pub struct Review {
    /// The API token (the Secret's `token`, else its `password`).
    pub token: String,
    /// Labels for the pull request.
    pub labels: Vec<String>,
}

impl std::fmt::Debug for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Review")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// One edit asked for.
#[derive(Debug, Clone)]
pub struct Edit {
    /// A file, or a directory to search.
    pub path: String,
    /// The field, when `path` is a file.
    pub field: Option<Field>,
    /// The workload's kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The container.
    pub container: String,
    /// The image it runs now.
    pub running: ImageReference,
    /// The image to write.
    pub image: String,
    /// This edit's line in the commit message.
    pub line: String,
    /// This edit's section of a pull request's body (Markdown).
    pub section: String,
    /// A revert's first paragraph (what failed), for its pull request.
    pub intro: Option<String>,
}

/// What a pushed edit became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The commit on the branch that carries the edit (ours, or the head
    /// when the file already said so).
    pub commit: String,
    /// The file edited.
    pub file: String,
    /// Whether this flush wrote it (false: the branch already had it).
    pub written: bool,
    /// Pushes rejected before this one went through.
    pub retries: u32,
    /// The pull request that proposes `commit`, and its branch.
    pub proposal: Option<(PullRequest, String)>,
}

/// Why an edit was not pushed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The repository could not be fetched or pushed to.
    #[error("{0}")]
    Git(String),
    /// The edit could not be made in the file.
    #[error("{0}")]
    Edit(String),
}

impl From<git2::Error> for WriteError {
    fn from(e: git2::Error) -> Self {
        Self::Git(explain(&e))
    }
}

/// libgit2's message, with what to do when it is about the server's host
/// key (libgit2 replaces the certificate callback's own message).
fn explain(e: &git2::Error) -> String {
    if e.class() == git2::ErrorClass::Ssh && e.message().contains("hostkey") {
        format!(
            "{}: the server's host key is not in the Secret's known_hosts (add the line \
             `ssh-keyscan -p <port> <host>` prints)",
            e.message()
        )
    } else {
        e.message().to_owned()
    }
}

struct Request {
    edit: Edit,
    reply: oneshot::Sender<Result<Pushed, WriteError>>,
}

struct Queue {
    pending: Vec<Request>,
    credentials: Credentials,
    review: Review,
    author: (String, String),
    scheduled: bool,
}

/// The writer shared by every Refresh.
pub struct Writer {
    dir: PathBuf,
    window: Duration,
    forge: super::forge::ForgeClient,
    queues: Mutex<HashMap<Target, Queue>>,
    /// One lock per clone: every target of a repository (branch, identity,
    /// delivery) shares its bare clone and its refs.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The commit settings of one request: who, and the first line.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Author name.
    pub name: String,
    /// Author e-mail.
    pub email: String,
}

impl Writer {
    /// A writer keeping clones under `dir`, batching edits asked within
    /// `window`, opening pull requests with `forge`.
    pub fn new(dir: PathBuf, window: Duration, forge: super::forge::ForgeClient) -> Arc<Self> {
        Arc::new(Self {
            dir,
            window,
            forge,
            queues: Mutex::default(),
            locks: Mutex::default(),
        })
    }

    /// The client that opens pull requests (and reads them back).
    pub fn forge(&self) -> &super::forge::ForgeClient {
        &self.forge
    }

    /// Commits `edit` to `target` with the next flush (proposing it with
    /// `review` when the target says so), and waits for it.
    pub async fn write(
        self: &Arc<Self>,
        target: Target,
        credentials: Credentials,
        review: Review,
        commit: Commit,
        edit: Edit,
    ) -> Result<Pushed, WriteError> {
        let (reply, answer) = oneshot::channel();
        let schedule = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues.entry(target.clone()).or_insert_with(|| Queue {
                pending: Vec::new(),
                credentials: credentials.clone(),
                review: review.clone(),
                author: (commit.name.clone(), commit.email.clone()),
                scheduled: false,
            });
            queue.credentials = credentials;
            queue.review = review;
            queue.pending.push(Request { edit, reply });
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if schedule {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.flush(target).await });
        }
        answer
            .await
            .map_err(|_| WriteError::Git("the git writer stopped".into()))?
    }

    /// After the window: one flush at a time per repository, of
    /// everything queued for the target by then.
    async fn flush(self: Arc<Self>, target: Target) {
        tokio::time::sleep(self.window).await;
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(clone_dir(&target.url)).or_default())
        };
        let _one_writer = lock.lock().await;
        let Some(queue) = ({
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues.remove(&target)
        }) else {
            return;
        };
        let dir = self.dir.join(clone_dir(&target.url));
        let (requests, replies): (Vec<Edit>, Vec<_>) =
            queue.pending.into_iter().map(|r| (r.edit, r.reply)).unzip();
        let author = queue.author.clone();
        let credentials = queue.credentials.clone();
        let t = target.clone();
        let edits = requests.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            commit_and_push(&dir, &t, &credentials, &author, &requests)
        })
        .await
        .unwrap_or_else(|e| Err(WriteError::Git(format!("the git task failed: {e}"))));
        let results = match (pushed, target.delivery) {
            (Ok((each, Some(branch))), Delivery::PullRequest { provider, revert }) => Ok(self
                .propose(
                    &target,
                    provider,
                    revert,
                    &queue.review,
                    &branch,
                    &edits,
                    each,
                )
                .await),
            (outcome, _) => outcome.map(|(each, _)| each),
        };
        match results {
            Ok(each) => {
                for (reply, result) in replies.into_iter().zip(each) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                warn!(url = %target.url, branch = %target.branch, error = %e, "git push failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Writer {
    /// Opens the pull request for a pushed batch; each written edit's
    /// result carries it, or fails with why it could not be opened.
    #[allow(clippy::too_many_arguments)]
    async fn propose(
        &self,
        target: &Target,
        provider: Provider,
        revert: bool,
        review: &Review,
        branch: &str,
        edits: &[Edit],
        each: Vec<Result<Pushed, WriteError>>,
    ) -> Vec<Result<Pushed, WriteError>> {
        let written: Vec<&Edit> = edits
            .iter()
            .zip(&each)
            .filter(|(_, r)| r.as_ref().is_ok_and(|p| p.written))
            .map(|(e, _)| e)
            .collect();
        let intro = if revert {
            written
                .iter()
                .filter_map(|e| e.intro.clone())
                .collect::<Vec<_>>()
                .join("\n\n")
        } else {
            forge_api::promotion_intro(written.len())
        };
        let title = match written.as_slice() {
            [one] => one.line.clone(),
            many => format!(
                "freshen: {} {} {}",
                if revert { "revert" } else { "promote" },
                many.len(),
                if revert {
                    "failed images"
                } else {
                    "images proven in canaries"
                }
            ),
        };
        let sections: Vec<String> = written.iter().map(|e| e.section.clone()).collect();
        let proposal = forge_api::Proposal {
            head: branch.to_owned(),
            base: target.branch.clone(),
            title,
            body: forge_api::body(&intro, &sections),
            labels: review.labels.clone(),
        };
        let opened = match forge_api::locate(provider, &target.url) {
            Ok(repo) if review.token.is_empty() => Err(format!(
                "opening a {} on {} needs an API token: set `token` (or `password`) in the \
                 policy's spec.git.secretRef",
                provider.noun(),
                repo.api
            )),
            Ok(repo) => self
                .forge
                .open(&repo, &review.token, &proposal)
                .await
                .map_err(|e| format!("opening a {} for branch {branch}: {e}", provider.noun())),
            Err(e) => Err(e.0),
        };
        match &opened {
            Ok(pr) => {
                info!(url = %target.url, number = pr.number, branch, "pull request opened");
            }
            Err(e) => warn!(url = %target.url, branch, error = %e, "pull request not opened"),
        }
        each.into_iter()
            .map(|r| match (r, &opened) {
                (Ok(p), Ok(pr)) if p.written => Ok(Pushed {
                    proposal: Some((pr.clone(), branch.to_owned())),
                    ..p
                }),
                (Ok(p), Err(e)) if p.written => Err(WriteError::Git(e.clone())),
                (r, _) => r,
            })
            .collect()
    }
}

/// The branch a pull request's commit goes to: `freshen/` and a hash of
/// the base branch and the edits' lines, so the same edits asked again
/// reach the same branch (and the pull request open from it).
fn proposal_branch(base: &str, revert: bool, lines: &[String]) -> String {
    let mut hash = Sha256::new();
    hash.update(base.as_bytes());
    hash.update([u8::from(revert)]);
    for l in lines {
        hash.update(l.as_bytes());
        hash.update(b"\n");
    }
    let hex: String = hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("freshen/{}{hex}", if revert { "revert-" } else { "" })
}

/// A directory name for a repository's clone: its URL hashed (no tenant
/// text in a path).
fn clone_dir(url: &str) -> String {
    let hash = Sha256::digest(url.as_bytes());
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn callbacks<'a>(
    credentials: &'a Credentials,
    rejected: Option<&'a Mutex<Vec<String>>>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut tried = false;
    cb.credentials(move |_url, user, allowed| {
        // libgit2 asks again after a refusal: answer once, then fail.
        if std::mem::replace(&mut tried, true) {
            return Err(git2::Error::from_str(
                "the repository refused the credentials",
            ));
        }
        match credentials {
            Credentials::Basic { username, password }
                if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
            {
                Cred::userpass_plaintext(username, password)
            }
            Credentials::Ssh { identity, .. } if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key_from_memory(user.unwrap_or("git"), None, identity, None)
            }
            _ => Err(git2::Error::from_str(
                "the repository asks for credentials the policy's Secret does not have",
            )),
        }
    });
    if let Credentials::Ssh { known_hosts, .. } = credentials {
        cb.certificate_check(move |cert, host| {
            let key = cert.as_hostkey().and_then(|h| h.hostkey());
            match key {
                Some(key) if known(known_hosts, host, key) => {
                    Ok(CertificateCheckStatus::CertificateOk)
                }
                _ => Err(git2::Error::from_str(&format!(
                    "host key of {host} is not in the Secret's known_hosts"
                ))),
            }
        });
    }
    if let Some(rejected) = rejected {
        cb.push_update_reference(move |reference, status| {
            if let Some(why) = status {
                rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{reference}: {why}"));
            }
            Ok(())
        });
    }
    cb
}

/// Whether `known_hosts` lists `key` for `host`.
fn known(known_hosts: &str, host: &str, key: &[u8]) -> bool {
    use base64::Engine as _;
    known_hosts.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        hosts
            .split(',')
            .any(|h| h == host || h.trim_start_matches('[').split(']').next() == Some(host))
            && base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_ok_and(|k| k == key)
    })
}

fn fetch(repo: &Repository, target: &Target, credentials: &Credentials) -> Result<Oid, WriteError> {
    let mut remote = repo.remote_anonymous(&target.url)?;
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks(credentials, None))
        .depth(1);
    let tracking = format!("refs/freshen/{}", target.branch);
    remote
        .fetch(
            &[format!("+refs/heads/{}:{tracking}", target.branch)],
            Some(&mut options),
            None,
        )
        .map_err(|e| {
            WriteError::Git(format!(
                "fetching branch {} of {}: {}",
                target.branch,
                target.url,
                explain(&e)
            ))
        })?;
    Ok(repo.refname_to_id(&tracking)?)
}

type Flushed = (Vec<Result<Pushed, WriteError>>, Option<String>);

/// Fetch, edit, commit, push; again on a rejected push. One result per
/// edit, in order, and the branch of a pull request's commit; `Err` when
/// the repository itself failed.
fn commit_and_push(
    dir: &Path,
    target: &Target,
    credentials: &Credentials,
    author: &(String, String),
    edits: &[Edit],
) -> Result<Flushed, WriteError> {
    let repo = match Repository::open_bare(dir) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| WriteError::Git(format!("creating {}: {e}", dir.display())))?;
            Repository::init_bare(dir)?
        }
    };
    for attempt in 0..PUSH_ATTEMPTS {
        let head = fetch(&repo, target, credentials)?;
        let parent = repo.find_commit(head)?;
        let (tree, results, lines) = apply(&repo, &parent.tree()?, edits)?;
        if lines.is_empty() {
            return Ok((finish(results, &head.to_string(), attempt), None));
        }
        let signature = Signature::now(&author.0, &author.1)?;
        let message = if let [line] = lines.as_slice() {
            format!("{line}\n\nCommitted by freshen.\n")
        } else {
            format!(
                "freshen: {} images proven in canaries\n\n{}\n",
                lines.len(),
                lines.join("\n")
            )
        };
        let tree = repo.find_tree(tree)?;
        let commit = repo.commit(None, &signature, &signature, &message, &tree, &[&parent])?;
        // A pull request's commit goes to a branch of its own, named by
        // what it changes: forced, as nobody else writes there.
        let (destination, proposed) = match target.delivery {
            Delivery::Push => (format!("refs/heads/{}", target.branch), None),
            Delivery::PullRequest { revert, .. } => {
                let branch = proposal_branch(&target.branch, revert, &lines);
                (format!("+refs/heads/{branch}"), Some(branch))
            }
        };
        let local = format!("refs/freshen-push/{}", target.branch);
        repo.reference(&local, commit, true, "freshen push")?;
        let rejected = Mutex::new(Vec::new());
        let mut remote = repo.remote_anonymous(&target.url)?;
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks(credentials, Some(&rejected)));
        let refspec = match destination.strip_prefix('+') {
            Some(d) => format!("+{local}:{d}"),
            None => format!("{local}:{destination}"),
        };
        let pushed = remote.push(&[refspec], Some(&mut options));
        drop(options);
        drop(remote);
        let refused = rejected.into_inner().unwrap_or_else(|e| e.into_inner());
        match pushed {
            Ok(()) if refused.is_empty() => {
                info!(url = %target.url, branch = %target.branch, commit = %commit, edits = lines.len(), "pushed");
                return Ok((finish(results, &commit.to_string(), attempt), proposed));
            }
            Ok(()) if proposed.is_some() => {
                return Err(WriteError::Git(format!(
                    "pushing branch {} to {}: {}",
                    proposed.unwrap_or_default(),
                    target.url,
                    refused.join("; ")
                )));
            }
            Ok(()) => {
                info!(url = %target.url, why = %refused.join("; "), attempt, "push rejected; fetching and re-applying")
            }
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::NotFastForward | git2::ErrorCode::Locked
                ) || e.message().contains("fast-forward") =>
            {
                info!(url = %target.url, why = %e.message(), attempt, "push rejected; fetching and re-applying");
            }
            Err(e) => {
                return Err(WriteError::Git(format!(
                    "pushing to branch {} of {}: {}",
                    target.branch,
                    target.url,
                    explain(&e)
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(200 * u64::from(attempt + 1)));
    }
    Err(WriteError::Git(format!(
        "branch {} of {} moved on {PUSH_ATTEMPTS} pushes in a row",
        target.branch, target.url
    )))
}

type Applied = (Oid, Vec<Result<Pushed, WriteError>>, Vec<String>);

/// Applies every edit to `tree` (several may touch one file): the new tree,
/// a result per edit (commit filled in later) and the message lines of
/// those that changed something.
fn apply(repo: &Repository, tree: &git2::Tree<'_>, edits: &[Edit]) -> Result<Applied, WriteError> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut changed: BTreeMap<String, ()> = BTreeMap::new();
    let mut results = Vec::new();
    let mut lines = Vec::new();
    for edit in edits {
        let outcome = edit_one(repo, tree, edit, &mut files);
        match outcome {
            Ok((file, written)) => {
                if written {
                    changed.insert(file.clone(), ());
                    lines.push(edit.line.clone());
                }
                results.push(Ok(Pushed {
                    commit: String::new(),
                    file,
                    written,
                    retries: 0,
                    proposal: None,
                }));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    let mut builder = git2::build::TreeUpdateBuilder::new();
    for file in changed.keys() {
        let text = files.get(file).map_or("", String::as_str);
        let blob = repo.blob(text.as_bytes())?;
        builder.upsert(file.as_str(), blob, FileMode::Blob);
    }
    let oid = builder.create_updated(repo, tree)?;
    Ok((oid, results, lines))
}

fn finish(
    results: Vec<Result<Pushed, WriteError>>,
    commit: &str,
    retries: u32,
) -> Vec<Result<Pushed, WriteError>> {
    results
        .into_iter()
        .map(|r| {
            r.map(|p| Pushed {
                commit: commit.to_owned(),
                retries,
                ..p
            })
        })
        .collect()
}

/// Edits one workload's image: in the file named, or the first file under
/// the directory that writes it (a kustomization's `images:` first).
fn edit_one(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    edit: &Edit,
    files: &mut BTreeMap<String, String>,
) -> Result<(String, bool), WriteError> {
    let subject = Subject {
        kind: &edit.kind,
        name: &edit.name,
        namespace: &edit.namespace,
        container: &edit.container,
        running: &edit.running,
    };
    // A file named (with its field), or a directory searched: for the
    // workload's own manifest, or for a HelmRelease's document.
    let named = match &edit.field {
        Some(Field::HelmRelease { .. }) | None => None,
        Some(field) => Some(field),
    };
    let candidates: Vec<(String, Field)> = match (named, &edit.field) {
        (Some(field), _) => vec![(edit.path.clone(), field.clone())],
        (None, Some(release)) => search(repo, tree, &edit.path)?
            .into_iter()
            .filter(|(_, f)| *f == Field::Manifest)
            .map(|(file, _)| (file, release.clone()))
            .collect(),
        (None, None) => search(repo, tree, &edit.path)?,
    };
    let mut looked = 0;
    for (file, field) in &candidates {
        let Some(text) = read(repo, tree, file, files)? else {
            if named.is_some() {
                return Err(WriteError::Edit(format!("{file} is not in the repository")));
            }
            continue;
        };
        looked += 1;
        match gitops::set_image(&text, field, &subject, &edit.image) {
            Ok(Edited::Changed(new)) => {
                files.insert(file.clone(), new);
                return Ok((file.clone(), true));
            }
            Ok(Edited::Unchanged) => return Ok((file.clone(), false)),
            Err(gitops::EditError::NotHere(why)) if named.is_none() => {
                let _ = why;
            }
            Err(e) => return Err(WriteError::Edit(format!("{file}: {e}"))),
        }
    }
    let wanted = match &edit.field {
        Some(field @ Field::HelmRelease { .. }) => field.to_string(),
        _ => format!(
            "container {}'s image of {} {}",
            edit.container, edit.kind, edit.name
        ),
    };
    Err(WriteError::Edit(format!(
        "no file under {:?} writes {wanted} ({looked} YAML file(s) read); set \
         freshen.dev/image-path to <file>[#<values.path>]",
        if edit.path.is_empty() {
            "/"
        } else {
            &edit.path
        },
    )))
}

/// The text of `file`, from this flush's edits or the tree; `None` when
/// it is absent, too large or not text.
fn read(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    file: &str,
    files: &BTreeMap<String, String>,
) -> Result<Option<String>, WriteError> {
    if let Some(t) = files.get(file) {
        return Ok(Some(t.clone()));
    }
    let Ok(entry) = tree.get_path(Path::new(file)) else {
        return Ok(None);
    };
    let Ok(blob) = entry.to_object(repo).and_then(|o| o.peel_to_blob()) else {
        return Ok(None);
    };
    if blob.size() > MAX_FILE_BYTES {
        return Ok(None);
    }
    Ok(std::str::from_utf8(blob.content()).ok().map(str::to_owned))
}

/// The YAML files under `dir`: its kustomization first, then every other,
/// in path order, at most [`MAX_FILES`].
fn search(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    dir: &str,
) -> Result<Vec<(String, Field)>, WriteError> {
    let sub = if dir.is_empty() {
        tree.clone()
    } else {
        match tree
            .get_path(Path::new(dir))
            .and_then(|e| e.to_object(repo))
            .and_then(|o| o.peel_to_tree())
        {
            Ok(t) => t,
            Err(_) => {
                return Err(WriteError::Edit(format!(
                    "directory {dir} is not in the repository"
                )));
            }
        }
    };
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut kustomizations = Vec::new();
    let mut manifests = Vec::new();
    sub.walk(TreeWalkMode::PreOrder, |root, entry| {
        if kustomizations.len() + manifests.len() >= MAX_FILES {
            return TreeWalkResult::Abort;
        }
        let Ok(name) = entry.name() else {
            return TreeWalkResult::Ok;
        };
        if entry.kind() != Some(ObjectType::Blob) {
            return TreeWalkResult::Ok;
        }
        let path = format!("{prefix}{root}{name}");
        match Field::for_file(&path) {
            Field::Kustomize if root.is_empty() => kustomizations.push((path, Field::Kustomize)),
            Field::Manifest if name.ends_with(".yaml") || name.ends_with(".yml") => {
                manifests.push((path, Field::Manifest));
            }
            _ => {}
        }
        TreeWalkResult::Ok
    })
    .ok();
    kustomizations.extend(manifests);
    Ok(kustomizations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_branches_are_named_by_their_edits() {
        let one = proposal_branch("main", false, &["a".into()]);
        assert!(
            one.starts_with("freshen/") && one.len() == "freshen/".len() + 12,
            "{one}"
        );
        assert_eq!(one, proposal_branch("main", false, &["a".into()]));
        assert_ne!(one, proposal_branch("main", false, &["b".into()]));
        assert_ne!(one, proposal_branch("prod", false, &["a".into()]));
        assert!(proposal_branch("main", true, &["a".into()]).starts_with("freshen/revert-"));
    }

    #[test]
    fn clone_directories_carry_no_url_text() {
        let d = clone_dir("https://git.example.com/../../etc");
        assert_eq!(d.len(), 24);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn host_keys_are_matched_by_host_and_key() {
        let known_hosts =
            "git.example.com,10.0.0.1 ssh-ed25519 AAEC\n[git.local]:2222 ssh-ed25519 AQID\n";
        assert!(known(known_hosts, "git.example.com", &[0, 1, 2]));
        assert!(!known(known_hosts, "git.example.com", &[1, 2, 3]));
        assert!(known(known_hosts, "git.local", &[1, 2, 3]));
        assert!(!known(known_hosts, "evil.example", &[0, 1, 2]));
    }
}
