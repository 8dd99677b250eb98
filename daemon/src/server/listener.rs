//! The listening socket: a private directory and file, one daemon per path, stale sockets
//! of dead daemons replaced, and the socket removed again at shutdown.
//!
//! # The directory must be the daemon's
//!
//! Whoever controls the socket's directory controls the socket: they can put their own
//! listener at the path before the daemon starts (clients then send them their texts), or
//! swap a file between the daemon's check and its chmod. So the directory is opened first
//! (`O_DIRECTORY | O_NOFOLLOW`) and checked on that descriptor, and nothing is created in
//! it before it passes:
//!
//! - A directory the daemon creates, and the default locations (`$XDG_RUNTIME_DIR/mlxd`,
//!   `/tmp/mlxd-$UID`) whoever created them, must be owned by the daemon's effective uid
//!   with mode 0700 or 0710 (anything else is refused: in `/tmp` any user can create
//!   `/tmp/mlxd-$UID` first). The daemon then sets it, through the descriptor, to what this
//!   run asks for: 0700, or 0710 group-owned by the `--socket-group`.
//! - The directory of an explicit `--socket` path (or `$MLXD_SOCKET`) that already exists
//!   — a user's own directory, a test's temporary one — must be owned by the daemon's
//!   effective uid or by root, and not writable by group or others unless its sticky bit
//!   is set (as on `/tmp`: there nobody may remove or rename another user's entries, so
//!   the daemon's own socket and lock file stay its own). Its mode is left as it is; the
//!   socket itself is still 0600 (0660 with a group).
//!
//! After that, the lock file, the stale-socket check and the socket's permissions all go
//! through the directory's descriptor (`openat`, `fstatat`, `unlinkat`, `fchownat`,
//! `fchmodat`), never through a path someone could redirect. bind(2) alone needs the path:
//! the socket is created with the umask (set in main) already 0077, so it is never
//! reachable by others, and is then checked through the descriptor to be a socket owned
//! by the daemon's uid. That check is enough because nobody else can add or replace
//! entries in a directory that passed the rules above: the name is the socket we bound,
//! and chmod on it cannot be sent elsewhere.
//!
//! # One daemon per path
//!
//! One daemon per path is decided by an exclusive `flock` on `PATH.lock`, held for the
//! daemon's life: the kernel drops it when the process dies however it dies, so two
//! daemons starting at the same moment cannot both remove and rebind the socket. A lock
//! we can take does not make an existing socket stale, though: a daemon the service
//! manager started on its own socket holds no lock. So the socket is connected to first,
//! and removed only when connections are refused for about 200 ms (nobody listens; on
//! macOS and the BSDs a full accept backlog is refused too, but not for long).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag};
use tokio::net::UnixListener;

/// A bound, listening socket and the lock that makes it ours.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    /// The socket file we created, so shutdown removes it and never a file that someone
    /// else put at the path meanwhile. `None` for a socket the service manager passed: it
    /// owns the file, which outlives this process.
    created: Option<CreatedSocket>,
    _lock: Option<Flock<File>>,
    /// "systemd" or "launchd" when the socket was inherited.
    pub activated_by: Option<&'static str>,
}

#[derive(Debug)]
struct CreatedSocket {
    directory: SocketDirectory,
    name: OsString,
    /// (device, inode) of the socket file.
    identity: (libc::dev_t, libc::ino_t),
}

impl BoundSocket {
    /// Binds `path` with mode 0600 in a directory of the daemon's own (see the module
    /// doc), created 0700 if missing — or, with a `group`, the socket 0660 and the
    /// directory 0710, both owned by that group.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<BoundSocket> {
        let name = path.file_name().with_context(|| format!("{} names no socket file", path.display()))?;
        let dir_path = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let directory = SocketDirectory::open_or_create(dir_path, group)?;
        let lock = directory.lock(name)?;
        directory.remove_stale_socket(name, path)?;
        let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let identity = directory.secure_socket(name, path, group)?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            created: Some(CreatedSocket { directory, name: name.to_owned(), identity }),
            _lock: Some(lock),
            activated_by: None,
        })
    }

    /// A socket the service manager bound and passed (socket activation). Its permissions
    /// are the unit's (`SocketMode=`, `SocketGroup=`); the daemon never removes it. Call
    /// within the tokio runtime.
    pub fn inherited(inherited: crate::service::activation::Inherited) -> Result<BoundSocket> {
        let listener =
            UnixListener::from_std(inherited.listener).context("registering the inherited socket with tokio")?;
        Ok(BoundSocket {
            listener,
            path: inherited.path.unwrap_or_else(|| PathBuf::from("(inherited socket)")),
            created: None,
            _lock: None,
            activated_by: Some(inherited.manager),
        })
    }

    /// Removes the socket file if it is still the one we bound.
    pub fn remove_socket_file(&self) {
        let Some(created) = &self.created else { return };
        let directory = created.directory.file.as_fd();
        match nix::sys::stat::fstatat(directory, created.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if (stat.st_dev, stat.st_ino) == created.identity => {
                let unlinked =
                    nix::unistd::unlinkat(directory, created.name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                if let Err(err) = unlinked {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove socket");
                }
            }
            _ => {}
        }
    }
}

/// The socket's directory, opened and checked; every later step goes through `file`.
#[derive(Debug)]
struct SocketDirectory {
    path: PathBuf,
    file: File,
    /// (device, inode), to notice the path being redirected after the check.
    identity: (u64, u64),
}

impl SocketDirectory {
    fn open_or_create(path: &Path, group: Option<u32>) -> Result<SocketDirectory> {
        let created = create_directory(path)?;
        let file = open_directory(path)?;
        let meta = file.metadata().with_context(|| format!("checking socket directory {}", path.display()))?;
        let euid = nix::unistd::geteuid().as_raw();
        if created || is_default_directory(path) {
            check_private(path, &meta, euid)?;
            // Ours and private: now exactly what this run asks for, set on the descriptor.
            let mode = match group {
                Some(gid) => {
                    // Members may pass through to the socket, not list the directory.
                    std::os::unix::fs::fchown(&file, None, Some(gid)).with_context(|| give_to_group(path, gid))?;
                    0o710
                }
                None => 0o700,
            };
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        } else {
            check_explicit(path, &meta, euid)?;
        }
        Ok(SocketDirectory { path: path.to_path_buf(), file, identity: (meta.dev(), meta.ino()) })
    }

    /// Takes the exclusive lock on `NAME.lock`, a regular file of the daemon's uid.
    fn lock(&self, name: &OsStr) -> Result<Flock<File>> {
        let mut lock_name = name.to_owned();
        lock_name.push(".lock");
        let lock_path = self.path.join(&lock_name);
        // O_NOFOLLOW: a symlink planted at the name must not make us create or lock a file
        // elsewhere; O_NONBLOCK: nor may a FIFO hang the open.
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(self.file.as_fd(), lock_name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
            .map_err(|errno| match errno {
            Errno::ELOOP => anyhow::anyhow!("{} is a symbolic link; remove it", lock_path.display()),
            errno => anyhow::anyhow!("opening {}: {errno}", lock_path.display()),
        })?;
        let file = File::from(fd);
        let meta = file.metadata().with_context(|| format!("checking {}", lock_path.display()))?;
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_file() {
            bail!("{} is not a regular file; remove it", lock_path.display());
        }
        if meta.uid() != euid {
            bail!(
                "{} belongs to uid {}, not to this daemon's user (uid {euid}); remove it or choose another --socket",
                lock_path.display(),
                meta.uid()
            );
        }
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((_, Errno::EWOULDBLOCK)) => bail!(
                "another mlxd is already serving {} (it holds {}); stop it first or choose another --socket",
                self.path.join(name).display(),
                lock_path.display()
            ),
            Err((_, errno)) => bail!("cannot lock {}: {errno}", lock_path.display()),
        }
    }

    /// Removes a socket at `name` that nobody listens on any more. `path` is `name` as
    /// the caller wrote it, to connect to and for messages.
    fn remove_stale_socket(&self, name: &OsStr, path: &Path) -> Result<()> {
        let stat = match nix::sys::stat::fstatat(self.file.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => bail!("checking {}: {errno}", path.display()),
        };
        if !is_socket(&stat) {
            bail!("{} exists and is not a socket; refusing to replace it", path.display());
        }
        let euid = nix::unistd::geteuid().as_raw();
        if stat.st_uid != euid {
            bail!(
                "{} is a socket of uid {}, not of this daemon's user (uid {euid}); refusing to replace it",
                path.display(),
                stat.st_uid
            );
        }
        // Sleeping blocks the thread for at most 200 ms, once, at start-up before anything
        // else runs, and only when a socket file is left over.
        match liveness(|| connect_nonblocking(path), std::thread::sleep) {
            Liveness::Served => bail!(
                "a daemon is already serving {} (it holds no lock: socket-activated?); stop it first or choose \
                 another --socket",
                path.display()
            ),
            Liveness::Gone => {}
            Liveness::Unknown(errno) => {
                bail!("cannot tell whether {} is still served ({errno}); refusing to replace it", path.display())
            }
        }
        tracing::warn!(path = %path.display(), "removing stale socket left by a daemon that is gone");
        match nix::unistd::unlinkat(self.file.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => bail!("removing stale socket {}: {errno}", path.display()),
        }
    }

    /// After bind: checks that the socket at `name` in this directory is the one we bound
    /// and gives it its mode (and group). Returns its (device, inode).
    fn secure_socket(&self, name: &OsStr, path: &Path, group: Option<u32>) -> Result<(libc::dev_t, libc::ino_t)> {
        // bind(2) resolved the path again; it must still lead to the directory we checked.
        let now = std::fs::metadata(&self.path).with_context(|| format!("checking {}", self.path.display()))?;
        if (now.dev(), now.ino()) != self.identity {
            bail!("{} was replaced while the daemon was binding its socket; refusing to serve", self.path.display());
        }
        let directory = self.file.as_fd();
        let stat = nix::sys::stat::fstatat(directory, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("checking the socket just bound at {}", path.display()))?;
        let euid = nix::unistd::geteuid().as_raw();
        if !is_socket(&stat) || stat.st_uid != euid {
            bail!("{} is not the socket this daemon bound; refusing to serve", path.display());
        }
        let mode = match group {
            Some(gid) => {
                nix::unistd::fchownat(
                    directory,
                    name,
                    None,
                    Some(nix::unistd::Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .with_context(|| give_to_group(path, gid))?;
                0o660
            }
            None => 0o600,
        };
        // The name is a socket (checked above), so there is no link to follow.
        nix::sys::stat::fchmodat(directory, name, Mode::from_bits_truncate(mode), FchmodatFlags::FollowSymlink)
            .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        Ok((stat.st_dev, stat.st_ino))
    }
}

/// Creates `path` (mode 0700; missing parents too) and says whether this call created
/// it. A directory that already exists, or appears meanwhile, is not ours to trust.
fn create_directory(path: &Path) -> Result<bool> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err).with_context(|| format!("creating socket directory {}", path.display())),
    }
}

fn open_directory(path: &Path) -> Result<File> {
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path);
    opened.or_else(|err| {
        // Say whose it is: "permission denied" alone hides a directory someone else made.
        let euid = nix::unistd::geteuid().as_raw();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("socket directory {} is a symbolic link; refusing to follow it", path.display())
            }
            Ok(meta) if !meta.is_dir() => bail!("{} is not a directory", path.display()),
            Ok(meta) if meta.uid() != euid => Err(not_yours(path, &meta, euid)),
            _ => Err(err).with_context(|| format!("opening socket directory {}", path.display())),
        }
    })
}

/// The rule for directories the daemon made or picks by default: its own, 0700 or 0710.
fn check_private(path: &Path, meta: &std::fs::Metadata, euid: u32) -> Result<()> {
    if meta.uid() != euid {
        return Err(not_yours(path, meta, euid));
    }
    let mode = meta.mode() & 0o777;
    if mode != 0o700 && mode != 0o710 {
        bail!(
            "refusing socket directory {}: its mode is {mode:04o}, so other users could put their own socket \
             in it; it must be 0700 (0710 with --socket-group). Run `chmod 0700 {}` (or remove it) and start again",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The rule for an existing directory named by `--socket`: the daemon's or root's, and
/// nobody else may replace entries in it.
fn check_explicit(path: &Path, meta: &std::fs::Metadata, euid: u32) -> Result<()> {
    if meta.uid() != euid && meta.uid() != 0 {
        bail!(
            "refusing socket directory {}: it belongs to uid {} (mode {:04o}), not to this daemon's user \
             (uid {euid}) or root, so its owner could replace the socket; choose a directory of your own",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        bail!(
            "refusing socket directory {}: its mode {:04o} lets other users replace the socket; run \
             `chmod go-w {}` or choose another directory",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

fn not_yours(path: &Path, meta: &std::fs::Metadata, euid: u32) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing socket directory {}: it belongs to uid {} (mode {:04o}), not to this daemon's user (uid {euid}), \
         and whoever made it could intercept the clients. Find out who created it, remove it (as root), or set \
         XDG_RUNTIME_DIR or --socket to a directory of your own",
        path.display(),
        meta.uid(),
        meta.mode() & 0o7777
    )
}

/// Whether `dir` is one of the locations the daemon picks when given no path (what
/// `mlxd_proto::paths::default_socket_path` returns without `$MLXD_SOCKET`).
fn is_default_directory(dir: &Path) -> bool {
    let uid = nix::unistd::getuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute());
    dir == Path::new(&format!("/tmp/mlxd-{uid}")) || runtime.is_some_and(|runtime| dir == runtime.join("mlxd"))
}

fn is_socket(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK
}

/// The pauses between connects that were refused, about 200 ms in all. On macOS and the
/// BSDs a listener whose accept backlog is full refuses connections (ECONNREFUSED, where
/// Linux answers EAGAIN), and a full backlog is normal for a busy daemon: it takes its
/// connection slot before accept. So a refusal is believed only once it persists.
const REFUSED_RETRY_PAUSES: [Duration; 4] =
    [Duration::from_millis(20), Duration::from_millis(40), Duration::from_millis(60), Duration::from_millis(80)];

/// What connecting to an existing socket file says about it.
#[derive(Debug, PartialEq, Eq)]
enum Liveness {
    /// Connected, or queued behind a full backlog: someone serves it.
    Served,
    /// Nobody listens (refused throughout the retries), or the file is gone.
    Gone,
    /// Any other answer: not ours to guess.
    Unknown(Errno),
}

/// Calls `connect` until it decides, with `pause` between refusals (see
/// [`REFUSED_RETRY_PAUSES`]); a missing file is gone at once.
fn liveness(mut connect: impl FnMut() -> std::result::Result<(), Errno>, mut pause: impl FnMut(Duration)) -> Liveness {
    let mut pauses = REFUSED_RETRY_PAUSES.into_iter();
    loop {
        match connect() {
            Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => return Liveness::Served,
            Err(Errno::ENOENT) => return Liveness::Gone,
            Err(Errno::ECONNREFUSED) => match pauses.next() {
                Some(wait) => pause(wait),
                None => return Liveness::Gone,
            },
            Err(errno) => return Liveness::Unknown(errno),
        }
    }
}

/// Connects to `path` without waiting: a listener with a full backlog answers EAGAIN
/// instead of blocking the daemon's start.
fn connect_nonblocking(path: &Path) -> std::result::Result<(), Errno> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let probe = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None)?;
    nix::fcntl::fcntl(&probe, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    connect(probe.as_raw_fd(), &UnixAddr::new(path)?)
}

fn give_to_group(path: &Path, gid: u32) -> String {
    format!("giving {} to group {gid} (the daemon's user must be a member)", path.display())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    /// A fresh directory under the system's temporary directory, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("mlxd-listener-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).expect("scratch dir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
    }

    fn refusal(path: &Path) -> String {
        format!("{:#}", BoundSocket::bind(path, None).expect_err("refused"))
    }

    #[test]
    fn the_default_locations_are_recognised() {
        let uid = nix::unistd::getuid().as_raw();
        assert!(is_default_directory(Path::new(&format!("/tmp/mlxd-{uid}"))));
        assert!(is_default_directory(Path::new(&format!("/tmp//mlxd-{uid}/"))));
        assert!(!is_default_directory(Path::new(&format!("/tmp/mlxd-{}", uid + 1))));
        assert!(!is_default_directory(Path::new("/tmp")));
    }

    #[tokio::test]
    async fn a_directory_it_creates_is_private_and_the_socket_too() {
        let scratch = Scratch::new("create");
        let path = scratch.0.join("a/b/s.sock");
        let bound = BoundSocket::bind(&path, None).expect("bind");
        assert_eq!(mode(&scratch.0.join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&scratch.0.join("a/b/s.sock.lock")), 0o600);
        bound.remove_socket_file();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_existing_directory_others_may_write_is_refused_unless_sticky() {
        let scratch = Scratch::new("writable");
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let path = scratch.0.join("s.sock");
        let message = refusal(&path);
        assert!(message.contains("0777") && message.contains("chmod go-w"), "{message}");
        assert!(!path.exists() && !scratch.0.join("s.sock.lock").exists(), "nothing created in it");
        assert_eq!(mode(&scratch.0), 0o777, "its mode is not ours to change");

        // Sticky, like /tmp: nobody else may remove or rename the daemon's entries.
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let bound = BoundSocket::bind(&path, None).expect("a sticky directory is accepted");
        assert_eq!(mode(&path), 0o600);
        drop(bound);
    }

    #[tokio::test]
    async fn a_lock_file_that_is_a_link_or_not_a_file_is_refused() {
        let scratch = Scratch::new("lock");
        let path = scratch.0.join("s.sock");
        let elsewhere = scratch.0.join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, scratch.0.join("s.sock.lock")).expect("symlink");
        let message = refusal(&path);
        assert!(message.contains("symbolic link"), "{message}");
        assert!(!elsewhere.exists(), "the link was not followed");

        std::fs::remove_file(scratch.0.join("s.sock.lock")).expect("rm");
        std::fs::create_dir(scratch.0.join("s.sock.lock")).expect("mkdir");
        let message = refusal(&path);
        assert!(message.contains("s.sock.lock"), "{message}");
    }

    #[test]
    fn a_refusal_is_believed_only_once_it_lasts() {
        let decide = |answers: &[Errno]| {
            let mut answers = answers.iter();
            let mut pauses = Vec::new();
            let liveness = liveness(|| answers.next().map_or(Ok(()), |&errno| Err(errno)), |wait| pauses.push(wait));
            (liveness, pauses.iter().sum::<Duration>(), answers.len())
        };
        let refused = Errno::ECONNREFUSED;
        // A full backlog on macOS: refused, then accepted into the queue, then connected.
        assert_eq!(decide(&[refused, refused]), (Liveness::Served, Duration::from_millis(60), 0));
        assert_eq!(decide(&[refused, Errno::EAGAIN]), (Liveness::Served, Duration::from_millis(20), 0));
        // Refused throughout: five tries over 200 ms, then gone.
        assert_eq!(decide(&[refused; 6]), (Liveness::Gone, Duration::from_millis(200), 1));
        // Missing: gone at once. Anything else: unknown at once.
        assert_eq!(decide(&[Errno::ENOENT]), (Liveness::Gone, Duration::ZERO, 0));
        assert_eq!(decide(&[refused, Errno::ENOENT]), (Liveness::Gone, Duration::from_millis(20), 0));
        assert_eq!(decide(&[Errno::EACCES, refused]), (Liveness::Unknown(Errno::EACCES), Duration::ZERO, 1));
    }

    /// A socket that is bound but not listening refuses connections on every platform, as
    /// a full backlog does on macOS: one that starts listening within the retries is served.
    #[test]
    fn a_socket_that_starts_listening_during_the_retries_is_served() {
        use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let scratch = Scratch::new("refusing");
        let path = scratch.0.join("s.sock");
        let bound = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).expect("socket");
        bind(bound.as_raw_fd(), &UnixAddr::new(&path).expect("address")).expect("bind");
        let mut connects = 0;
        let gone = liveness(
            || {
                connects += 1;
                connect_nonblocking(&path)
            },
            |_| {},
        );
        assert_eq!((gone, connects), (Liveness::Gone, REFUSED_RETRY_PAUSES.len() + 1), "nobody listens");

        let mut listening = false;
        let served = liveness(
            || connect_nonblocking(&path),
            |_| {
                listen(&bound, Backlog::new(1).expect("backlog")).expect("listen");
                listening = true;
            },
        );
        assert!(listening, "the first connect was refused");
        assert_eq!(served, Liveness::Served);
    }

    #[tokio::test]
    async fn a_socket_someone_listens_on_is_never_removed() {
        let scratch = Scratch::new("live");
        let path = scratch.0.join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let message = refusal(&path);
        assert!(message.contains("already serving") && message.contains("socket-activated"), "{message}");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok(), "still served");
        drop(live);

        // Nobody listens any more: stale, replaced.
        let bound = BoundSocket::bind(&path, None).expect("a stale socket is replaced");
        assert!(std::fs::symlink_metadata(&path).expect("stat").file_type().is_socket());
        drop(bound);
    }
}
