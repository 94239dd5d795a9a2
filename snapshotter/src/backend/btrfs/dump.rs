//! Reading `btrfs receive --dump` of an incremental send stream
//! (`btrfs send --no-data -p PARENT SUBVOL`) into the set of paths that
//! may differ from the parent.
//!
//! The dump (btrfs-progs `cmds/receive-dump.c`, 4.x to 6.x) prints one
//! command per line: the command padded to 16 columns, then the path as
//! `./SUBVOL/REL`, escaped C-style (`\a \b \e \f \n \r \t \v`, `\ `, `\\`,
//! `\ooo` for other unprintable bytes), then `key=value` arguments. The
//! names are those of the tree being rebuilt *at that point of the stream*:
//! new inodes appear under orphan names `o<ino>-<gen>-<n>` in the root and
//! are renamed into place later, and existing ones may be renamed to orphan
//! names before being removed (and their children unlinked under those
//! names). So every path named by any command is kept, with two
//! translations: each `rename FROM dest=TO` adds, for every path kept so
//! far at or below `FROM`, the same path below `TO` (whatever name a
//! changed inode ends up with is then in the set), and remembers that `TO`
//! was `FROM` before, so that a path later named below `TO` is also kept
//! under its name in the parent (a file unlinked inside a directory that
//! was first renamed to an orphan name needs its parent-tree name for the
//! whiteout). Names that existed only in the middle of the stream are
//! extras, which a diff ignores.
//!
//! Anything unexpected (an unknown command, a bad escape, a path outside
//! the subvolume, a line broken by a raw newline in an xattr value) is a
//! [`Surprise`]: the caller then compares whole trees instead.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Commands whose only path of interest is their first field.
const PATH_COMMANDS: &[&str] = &[
    "mkfile",
    "mkdir",
    "mknod",
    "mkfifo",
    "mksock",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "write",
    "clone",
    "set_xattr",
    "remove_xattr",
    "truncate",
    "chmod",
    "chown",
    "utimes",
    "update_extent",
    "encoded_write",
    "fallocate",
    "fileattr",
    "enable_verity",
];

pub use crate::backend::Surprise;

/// Undoes `print_path_escaped`; None on a malformed escape.
pub fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *s.get(i)?;
        i += 1;
        out.push(match e {
            b'a' => 0x07,
            b'b' => 0x08,
            b'e' => 0x1b,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b' ' => b' ',
            b'\\' => b'\\',
            b'0'..=b'3' => {
                let d = s.get(i..i + 2)?;
                if !d.iter().all(|b| (b'0'..=b'7').contains(b)) {
                    return None;
                }
                i += 2;
                ((e - b'0') << 6) | ((d[0] - b'0') << 3) | (d[1] - b'0')
            }
            _ => return None,
        });
    }
    Some(out)
}

/// Splits off the escaped field at the start of `s` (up to the first
/// unescaped space); returns it and the rest after the spaces.
fn field(s: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < s.len() && s[i] != b' ' {
        i += if s[i] == b'\\' { 2 } else { 1 };
    }
    let end = i.min(s.len());
    let mut rest = &s[end..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    (&s[..end], rest)
}

/// `path`, which is at or below `old`, moved to be at or below `new`.
fn rebase(new: &Path, path: &Path, old: &Path) -> PathBuf {
    match path.strip_prefix(old) {
        Ok(rel) if !rel.as_os_str().is_empty() => new.join(rel),
        _ => new.to_owned(),
    }
}

/// The changed paths read from a dump, line by line.
#[derive(Debug, Default)]
pub struct DumpPaths {
    /// `./SUBVOL/`, from the first line.
    prefix: Option<Vec<u8>>,
    paths: BTreeSet<PathBuf>,
    /// Renamed paths (current name) and their name in the parent tree.
    earlier: BTreeMap<PathBuf, PathBuf>,
    lines: usize,
}

impl DumpPaths {
    /// An empty reader; feed it every line with [`DumpPaths::line`].
    pub fn new() -> DumpPaths {
        DumpPaths::default()
    }

    fn surprise(&self, what: &'static str) -> Surprise {
        Surprise {
            tool: "btrfs receive --dump",
            line: self.lines,
            what,
        }
    }

    /// The path relative to the subvolume of an escaped `./SUBVOL/REL`.
    fn relative(&self, escaped: &[u8]) -> Result<PathBuf, Surprise> {
        let raw = unescape(escaped).ok_or_else(|| self.surprise("bad escape in a path"))?;
        let prefix = self
            .prefix
            .as_deref()
            .ok_or_else(|| self.surprise("a command before the snapshot line"))?;
        let rel = raw
            .strip_prefix(prefix)
            .ok_or_else(|| self.surprise("a path outside the subvolume"))?;
        let rel = Path::new(OsStr::from_bytes(rel));
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(self.surprise("a path that is not plainly relative"));
        }
        Ok(rel.to_owned())
    }

    /// The name `rel` had before the renames seen so far, if one of them
    /// moved it or an ancestor.
    fn earlier_name(&self, rel: &Path) -> Option<PathBuf> {
        rel.ancestors().find_map(|a| {
            let was = self.earlier.get(a)?;
            Some(rebase(was, rel, a))
        })
    }

    fn keep(&mut self, rel: PathBuf) {
        // The root itself is never part of a layer.
        if rel.as_os_str().is_empty() {
            return;
        }
        if let Some(was) = self.earlier_name(&rel) {
            self.paths.insert(was);
        }
        self.paths.insert(rel);
    }

    fn rename(&mut self, from: PathBuf, to: PathBuf) {
        let was = self.earlier_name(&from).unwrap_or_else(|| from.clone());
        self.keep(from.clone());
        let under = |p: &PathBuf| p.starts_with(&from);
        let moved: Vec<PathBuf> = self
            .paths
            .range(from.clone()..)
            .take_while(|p| under(p))
            .map(|p| rebase(&to, p, &from))
            .collect();
        self.paths.extend(moved);
        let moved: Vec<(PathBuf, PathBuf)> = self
            .earlier
            .range(from.clone()..)
            .take_while(|(p, _)| under(p))
            .map(|(p, w)| (p.clone(), w.clone()))
            .collect();
        for (p, w) in moved {
            self.earlier.remove(&p);
            if p != from {
                self.earlier.insert(rebase(&to, &p, &from), w);
            }
        }
        self.earlier.insert(to.clone(), was);
        self.keep(to);
    }

    /// Reads one line (without its newline).
    pub fn line(&mut self, line: &[u8]) -> Result<(), Surprise> {
        self.lines += 1;
        let (cmd, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, &line[line.len()..]),
        };
        let rest = rest.trim_ascii_start();
        let cmd = std::str::from_utf8(cmd).map_err(|_| self.surprise("not a command"))?;
        let (path, args) = field(rest);
        if path.is_empty() {
            return Err(self.surprise("no path"));
        }
        match cmd {
            "snapshot" if self.prefix.is_none() => {
                let mut p = unescape(path).ok_or_else(|| self.surprise("bad escape"))?;
                if !p.starts_with(b"./") || p.len() < 3 {
                    return Err(self.surprise("unexpected subvolume path"));
                }
                p.push(b'/');
                self.prefix = Some(p);
            }
            "snapshot" | "subvol" => {
                return Err(self.surprise("not a single incremental stream"));
            }
            "rename" => {
                let from = self.relative(path)?;
                let dest = args
                    .strip_prefix(b"dest=")
                    .ok_or_else(|| self.surprise("rename without dest="))?;
                let (dest, tail) = field(dest);
                if !tail.is_empty() {
                    return Err(self.surprise("text after the rename destination"));
                }
                let to = self.relative(dest)?;
                if from.as_os_str().is_empty() || to.as_os_str().is_empty() {
                    return Err(self.surprise("rename of the root"));
                }
                self.rename(from, to);
            }
            c if PATH_COMMANDS.contains(&c) => {
                let rel = self.relative(path)?;
                self.keep(rel);
            }
            _ => return Err(self.surprise("unknown command")),
        }
        Ok(())
    }

    /// The paths, once every line is read; an empty dump is a surprise
    /// (there is always the snapshot line).
    pub fn finish(self) -> Result<BTreeSet<PathBuf>, Surprise> {
        if self.prefix.is_none() {
            return Err(self.surprise("no snapshot line"));
        }
        Ok(self.paths)
    }
}

/// Reads a whole dump.
pub fn parse(dump: &[u8]) -> Result<BTreeSet<PathBuf>, Surprise> {
    let mut d = DumpPaths::new();
    let body = dump.strip_suffix(b"\n").unwrap_or(dump);
    if !body.is_empty() {
        for line in body.split(|&b| b == b'\n') {
            d.line(line)?;
        }
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&[u8]]) -> BTreeSet<PathBuf> {
        paths
            .iter()
            .map(|p| PathBuf::from(OsStr::from_bytes(p)))
            .collect()
    }

    /// Captured with btrfs-progs 6.2 on Linux 6.18 (`LC_ALL=C btrfs send
    /// -q --no-data -p p c-ro | LC_ALL=C btrfs receive --dump`): renames of
    /// a file and of directories, a deleted directory (renamed to an orphan
    /// name first), a file moved by link+unlink, xattr, chmod, chown, a
    /// content change with the same size and mtime, a hard-linked file
    /// changed through its other name, a directory deleted and recreated,
    /// a file replaced by a directory, new files, directories, a symlink, a
    /// fifo and a name with control, space and UTF-8 bytes.
    const SAMPLE: &str = r"snapshot        ./c-ro                          uuid=49be3c9d-904e-cb4d-88f2-8f8d1a77aaab transid=9 parent_uuid=ffea08e7-6bb2-694a-9c53-33dc10c82049 parent_transid=7
rename          ./c-ro/d                        dest=./c-ro/dd
rename          ./c-ro/sp\ ace                  dest=./c-ro/o259-7-0
rename          ./c-ro/keep                     dest=./c-ro/keep2
link            ./c-ro/fmoved                   dest=f
unlink          ./c-ro/f
set_xattr       ./c-ro/fmoved                   name=user.x data=1 len=1
chmod           ./c-ro/fmoved                   mode=600
utimes          ./c-ro/fmoved                   atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:25+0000
unlink          ./c-ro/o259-7-0/we\ ird\\name
rmdir           ./c-ro/o259-7-0
chown           ./c-ro/dd/e/g                   gid=5 uid=5
utimes          ./c-ro/dd/e/g                   atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:25+0000
update_extent   ./c-ro/same                     offset=0 len=3
utimes          ./c-ro/same                     atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:25+0000
update_extent   ./c-ro/linked                   offset=0 len=7
utimes          ./c-ro/linked                   atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:25+0000 ctime=2026-11-23T15:33:25+0000
rename          ./c-ro/recreated                dest=./c-ro/o267-7-0
unlink          ./c-ro/o267-7-0/old
rmdir           ./c-ro/o267-7-0
mkfile          ./c-ro/o269-9-0
rename          ./c-ro/o269-9-0                 dest=./c-ro/f2
update_extent   ./c-ro/f2                       offset=0 len=4
chown           ./c-ro/f2                       gid=0 uid=0
chmod           ./c-ro/f2                       mode=644
utimes          ./c-ro/f2                       atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:20+0000
mkdir           ./c-ro/o270-9-0
rename          ./c-ro/o270-9-0                 dest=./c-ro/newdir
chown           ./c-ro/newdir                   gid=0 uid=0
chmod           ./c-ro/newdir                   mode=755
mkfile          ./c-ro/o271-9-0
rename          ./c-ro/o271-9-0                 dest=./c-ro/newdir/n
update_extent   ./c-ro/newdir/n                 offset=0 len=2
symlink         ./c-ro/o272-9-0                 dest=target
rename          ./c-ro/o272-9-0                 dest=./c-ro/sym
chown           ./c-ro/sym                      gid=0 uid=0
mkdir           ./c-ro/o273-9-0
rename          ./c-ro/o273-9-0                 dest=./c-ro/recreated
mkfile          ./c-ro/o274-9-0
rename          ./c-ro/o274-9-0                 dest=./c-ro/recreated/fresh
update_extent   ./c-ro/recreated/fresh          offset=0 len=6
mkdir           ./c-ro/o275-9-0
rename          ./c-ro/o275-9-0                 dest=./c-ro/f
chmod           ./c-ro/f                        mode=755
mkfifo          ./c-ro/o276-9-0
rename          ./c-ro/o276-9-0                 dest=./c-ro/fifo
mkfile          ./c-ro/o277-9-0
rename          ./c-ro/o277-9-0                 dest=./c-ro/ctl\001\ x\t\303\251
update_extent   ./c-ro/ctl\001\ x\t\303\251     offset=0 len=8
utimes          ./c-ro/                         atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:25+0000 ctime=2026-11-23T15:33:25+0000
utimes          ./c-ro/recreated                atime=2026-11-23T15:33:25+0000 mtime=2026-11-23T15:33:25+0000 ctime=2026-11-23T15:33:25+0000
utimes          ./c-ro/newdir                   atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:20+0000
utimes          ./c-ro/keep2                    atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:25+0000
utimes          ./c-ro/dd                       atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:20+0000
";

    #[test]
    fn captured_dump() {
        let got = parse(SAMPLE.as_bytes()).unwrap();
        // Every final name of a new or changed entry, every removed name.
        for want in [
            &b"d"[..],
            b"dd",
            b"dd/e/g",
            b"sp ace",
            b"keep",
            b"keep2",
            b"f",
            b"fmoved",
            b"same",
            b"linked",
            b"recreated",
            b"recreated/fresh",
            b"f2",
            b"newdir",
            b"newdir/n",
            b"sym",
            b"fifo",
            b"ctl\x01 x\t\xc3\xa9",
        ] {
            let p = PathBuf::from(OsStr::from_bytes(want));
            assert!(got.contains(&p), "{p:?} missing from {got:?}");
        }
        // Orphan names are kept (extras are harmless), the root is not.
        assert!(got.contains(Path::new("o259-7-0")));
        assert!(!got.contains(Path::new("")));
        // The children of deleted directories, unlinked under the orphan
        // names, are also kept under their names in the parent.
        assert!(got.contains(Path::new("o259-7-0/we ird\\name")));
        assert!(got.contains(Path::new("sp ace/we ird\\name")));
        assert!(got.contains(Path::new("recreated/old")));
    }

    /// Captured likewise: a hard link whose name needs escapes, a symlink
    /// target with a newline that looks like a command, xattr removal,
    /// truncate, a device node, a socket, a renamed directory whose name
    /// ends in a backslash.
    const SAMPLE2: &str = r"snapshot        ./d2-ro                         uuid=f7f90655-d3b6-ba4e-b7e6-41f1180abd33 transid=11 parent_uuid=49be3c9d-904e-cb4d-88f2-8f8d1a77aaab parent_transid=9
rename          ./d2-ro/dd                      dest=./d2-ro/d\ d\\
link            ./d2-ro/hl\ \\\ sp\nnl          dest=fmoved
remove_xattr    ./d2-ro/fmoved                  name=user.x
truncate        ./d2-ro/same                    size=1
symlink         ./d2-ro/o278-11-0               dest=tg\ t\\x\nunlink\ ./d2-ro/zz
rename          ./d2-ro/o278-11-0               dest=./d2-ro/sy\ m
mknod           ./d2-ro/o279-11-0               mode=20644 dev=0x103
rename          ./d2-ro/o279-11-0               dest=./d2-ro/dev
mksock          ./d2-ro/o280-11-0
rename          ./d2-ro/o280-11-0               dest=./d2-ro/sock
utimes          ./d2-ro/d\ d\\                  atime=2026-11-23T15:33:20+0000 mtime=2026-11-23T15:33:20+0000 ctime=2026-11-23T15:33:35+0000
";

    #[test]
    fn captured_dump_with_escapes() {
        let got = parse(SAMPLE2.as_bytes()).unwrap();
        assert_eq!(
            got,
            set(&[
                b"dd",
                b"d d\\",
                b"hl \\ sp\nnl",
                b"fmoved",
                b"same",
                b"o278-11-0",
                b"sy m",
                b"o279-11-0",
                b"dev",
                b"o280-11-0",
                b"sock",
            ])
        );
    }

    /// A changed file inside a directory that is renamed later (also via
    /// an orphan name) is found under the directory's final name.
    #[test]
    fn renames_carry_earlier_paths() {
        let dump = "snapshot        ./5                             uuid=x transid=1 parent_uuid=y parent_transid=1
update_extent   ./5/a/b/f                       offset=0 len=1
rename          ./5/a                           dest=./5/o300-1-0
chmod           ./5/o300-1-0/b                  mode=700
rename          ./5/o300-1-0                    dest=./5/z
rename          ./5/ab                          dest=./5/y
";
        assert_eq!(
            parse(dump.as_bytes()).unwrap(),
            set(&[
                b"a",
                b"a/b",
                b"a/b/f",
                b"o300-1-0",
                b"o300-1-0/b",
                b"o300-1-0/b/f",
                b"z",
                b"z/b",
                b"z/b/f",
                b"ab",
                b"y",
            ])
        );
    }

    #[test]
    fn surprises() {
        let head = "snapshot        ./5                             uuid=x transid=1 parent_uuid=y parent_transid=1\n";
        for (body, what) in [
            ("frobnicate      ./5/a\n", "unknown command"),
            (
                "chmod           ./6/a                           mode=1\n",
                "outside",
            ),
            (
                "chmod           ./5/a\\q                         mode=1\n",
                "bad escape",
            ),
            (
                "chmod           ./5/../x                        mode=1\n",
                "plainly",
            ),
            (
                "rename          ./5/a                           to=./5/b\n",
                "dest=",
            ),
            (
                "snapshot        ./5                             uuid=x\n",
                "single",
            ),
            // A raw newline in an xattr value breaks the line.
            (
                "set_xattr       ./5/a                           name=user.a data=x\nl len=3\n",
                "unknown command",
            ),
        ] {
            let e = parse(format!("{head}{body}").as_bytes()).unwrap_err();
            assert!(e.what.contains(what), "{body:?}: {e}");
        }
        assert!(parse(b"").is_err());
        assert!(
            parse(b"subvol          ./5                             uuid=x transid=1\n").is_err()
        );
        assert_eq!(parse(head.as_bytes()).unwrap(), BTreeSet::new());
    }

    #[test]
    fn escapes() {
        assert_eq!(
            unescape(br"a\ b\\c\n\t\001\377\e").unwrap(),
            b"a b\\c\n\t\x01\xff\x1b"
        );
        assert_eq!(unescape(br"\4"), None);
        assert_eq!(unescape(br"\08"), None);
        assert_eq!(unescape(b"x\\"), None);
    }
}
