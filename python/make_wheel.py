"""Writes the kvpool wheel (run by scripts/build_wheel.sh; python/README.md).

Layout inside the wheel:
  kvpool/*.py, kvpool/integrations/*.py      the package (pure Python)
  kvpool/_native/libkvpool_c.so.1            the C API, run path $ORIGIN
  kvpool/_native/lib<name>-<hash>.so.<N>     every library it loads beyond glibc and the C++ runtime
  kvpool/_native/ucx/libuct_*.so.0           UCX's transport modules (cma, ib, rdmacm), run path $ORIGIN/..
  kvpool/_native/licenses/                   the Debian copyright file of each bundled library
  kvpool/_native/BUNDLED.txt                 what came from where (Debian package and version)

Bundled libraries get a new file name and soname with a hash of their bytes
(as auditwheel does): a process that already loaded another copy of, say,
libucs.so.0 (another package's UCX) would otherwise be handed that copy for
ours, because the loader matches loaded objects by soname first.

The platform tag is derived, not assumed. libstdc++ and libgcc_s are not
bundled: they are in the manylinux baseline, and a process such as torch's
has loaded the system's copy already (a second, renamed one would get half
its symbols bound to the first). So manylinux_x_y must cover both the
highest GLIBC_x.y symbol version any bundled object needs and the oldest
glibc level whose baseline libstdc++ has the highest GLIBCXX version needed
(GLIBCXX_BASELINE: the distributions auditwheel's policies are built on).
Built on Debian 12: GLIBC_2.34 but GLIBCXX_3.4.30 (GCC 12), which RHEL 9
(glibc 2.34, GCC 11) lacks and Ubuntu 22.04 (glibc 2.35, GCC 12) has, so
manylinux_2_35.
"""

import argparse
import base64
import ctypes
import hashlib
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

# The oldest manylinux glibc level whose baseline libstdc++ provides a GLIBCXX
# version: CentOS 7 (GCC 4.8), Ubuntu 20.04 (GCC 10), RHEL 9 (GCC 11),
# Ubuntu 22.04 (GCC 12).
GLIBCXX_BASELINE = {(3, 4, 19): (2, 17), (3, 4, 28): (2, 31), (3, 4, 29): (2, 34), (3, 4, 30): (2, 35)}

# Never bundled: glibc's libraries, the dynamic loader, the C++ runtime.
SYSTEM = re.compile(r"^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|"
                    r"libgcc_s)\.so")
MODULE_NAME = re.compile(r"^libuct_\w+\.so\.\d+$")


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ldd(path):
    """{soname: resolved path} of everything path loads (transitively)."""
    out = {}
    for line in run("ldd", str(path)).splitlines():
        m = re.match(r"\s*(\S+) => (\S+) \(", line)
        if m:
            out[m.group(1)] = m.group(2)
        elif "not found" in line:
            sys.exit(f"make_wheel: {path}: {line.strip()}")
    return out


def needed(path):
    return re.findall(r"NEEDED\s+(\S+)", run("objdump", "-p", str(path)))


def debian_package(path):
    """(package, version) owning a file, or ("?", "?") off Debian."""
    for candidate in (path, os.path.realpath(path)):
        for p in (candidate, candidate.replace("/usr/lib/", "/lib/", 1), candidate.replace("/lib/", "/usr/lib/", 1)):
            try:
                pkg = run("dpkg-query", "-S", p).split(":", 1)[0].strip()
                version = run("dpkg-query", "-W", "-f=${Version}", pkg).strip()
                return pkg, version
            except (subprocess.CalledProcessError, FileNotFoundError):
                continue
    return "?", "?"


def max_version(objects, prefix):
    best = (0,)
    for o in objects:
        for v in re.findall(rf"\b{re.escape(prefix)}_([0-9.]+)\b", run("objdump", "-T", str(o))):
            best = max(best, tuple(int(x) for x in v.split(".")))
    return best


def platform_glibc(glibc, glibcxx):
    """The x_y of the manylinux tag for these symbol needs (module docstring)."""
    levels = [g for v, g in sorted(GLIBCXX_BASELINE.items()) if v >= glibcxx]
    if not levels:
        sys.exit(f"make_wheel: GLIBCXX_{'.'.join(map(str, glibcxx))} is newer than GLIBCXX_BASELINE knows: add the "
                 "oldest manylinux level whose libstdc++ has it")
    x, y = max(tuple(glibc[:2]), levels[0])
    return f"{x}_{y}"


def urlsafe_digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def library_version(library):
    lib = ctypes.CDLL(str(library))
    lib.kvpool_version_string.restype = ctypes.c_char_p
    return lib.kvpool_version_string().decode()


def stage_native(library, native):
    """Copies the library, UCX's modules and their dependencies into native;
    returns the bundled libraries' manifest lines."""
    modules_dir = native / "ucx"
    modules_dir.mkdir(parents=True)
    main = native / "libkvpool_c.so.1"
    run("strip", "--strip-unneeded", "-o", str(main), str(library))
    deps = ldd(main)
    if "libucs.so.0" not in deps:
        sys.exit("make_wheel: libkvpool_c.so does not load libucs.so.0: not the library this script knows")
    system_modules = pathlib.Path(os.path.realpath(deps["libucs.so.0"])).parent / "ucx"
    modules = sorted(p for p in system_modules.glob("libuct_*.so.*") if MODULE_NAME.match(p.name))
    if not modules:
        sys.exit(f"make_wheel: no UCX modules in {system_modules}")
    for m in modules:
        shutil.copyfile(m, modules_dir / m.name)  # follows the link to the real file
        deps.update(ldd(m))
    bundled = {}  # soname -> source path
    for name, path in sorted(deps.items()):
        if SYSTEM.match(name) or MODULE_NAME.match(name) or name == "libkvpool_c.so.1":
            continue
        bundled[name] = path

    renamed, manifest = {}, []
    for name, path in bundled.items():
        data = pathlib.Path(path).read_bytes()
        stem, suffix = name.split(".so", 1)
        new = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.so{suffix}"
        (native / new).write_bytes(data)
        renamed[name] = new
        pkg, version = debian_package(path)
        manifest.append(f"{new}\t{name}\t{os.path.realpath(path)}\t{pkg}\t{version}")
        copyright_file = pathlib.Path("/usr/share/doc") / pkg / "copyright"
        if copyright_file.exists():
            (native / "licenses").mkdir(exist_ok=True)
            shutil.copyfile(copyright_file, native / "licenses" / f"{pkg}.copyright")

    for obj in [main, *(native / n for n in renamed.values()), *(modules_dir / m.name for m in modules)]:
        # One change per patchelf call: Debian 12's patchelf 0.14 writes wrong
        # strings when one call makes several (seen: RUNPATH and SONAME set to
        # a NEEDED name); verify() below reads every result back.
        for dep in needed(obj):
            if dep in renamed:
                run("patchelf", "--replace-needed", dep, renamed[dep], str(obj))
        if obj.name in renamed.values():
            run("patchelf", "--set-soname", obj.name, str(obj))
        rpath = "$ORIGIN/..:$ORIGIN" if obj.parent == modules_dir else "$ORIGIN"
        run("patchelf", "--set-rpath", rpath, str(obj))
        os.chmod(obj, 0o755)
        verify(obj, renamed, rpath)
    return manifest


def verify(obj, renamed, rpath):
    """The dynamic section patchelf left: the run path, the soname, and no
    NEEDED entry still naming a library under its old name."""
    dyn = run("objdump", "-p", str(obj))
    runpath = re.findall(r"RUNPATH\s+(\S+)", dyn)
    soname = re.findall(r"SONAME\s+(\S+)", dyn)
    stale = [d for d in needed(obj) if d in renamed]
    if runpath != [rpath] or (obj.name in renamed.values() and soname != [obj.name]) or stale:
        sys.exit(f"make_wheel: patchelf left {obj.name} with RUNPATH {runpath}, SONAME {soname}, old NEEDED {stale}")


def check_closed(native):
    """Every DT_NEEDED of every bundled object is bundled or a system library."""
    objects = [p for p in native.rglob("*.so*") if p.is_file()]
    names = {p.name for p in objects}
    for o in objects:
        for dep in needed(o):
            if dep not in names and not SYSTEM.match(dep):
                sys.exit(f"make_wheel: {o.name} needs {dep}, which is not bundled")
    return objects


def write_wheel(stage, out_dir, version, tag, readme):
    dist_info = f"kvpool-{version}.dist-info"
    meta = stage / dist_info
    meta.mkdir()
    (meta / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kvpool\n"
        f"Version: {version}\nSummary: A cluster DRAM pool for LLM KV cache: the Python client\n"
        "Requires-Python: >=3.10\nDescription-Content-Type: text/markdown\n\n" + readme)
    (meta / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kvpool python/make_wheel.py\n"
                                f"Root-Is-Purelib: false\nTag: {tag}\n")
    (meta / "top_level.txt").write_text("kvpool\n")
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    wheel = out_dir / f"kvpool-{version}-{tag}.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("kvpool-*.whl"):  # one wheel, so `pip install dist/kvpool-*.whl` is unambiguous
        old.unlink()
    record_name = f"{dist_info}/RECORD"
    record = []
    # Fixed timestamps: the same inputs give the same wheel.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
    stamp = tuple(time.gmtime(max(epoch, 315532800))[:6])
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            arc = p.relative_to(stage).as_posix()
            data = p.read_bytes()
            info = zipfile.ZipInfo(arc, stamp)
            info.external_attr = (0o100755 if os.access(p, os.X_OK) else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            record.append(f"{arc},sha256={urlsafe_digest(data)},{len(data)}")
        record.append(f"{record_name},,")
        info = zipfile.ZipInfo(record_name, stamp)
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, "\n".join(record) + "\n")
    return wheel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, type=pathlib.Path, help="python/kvpool")
    ap.add_argument("--library", required=True, type=pathlib.Path, help="libkvpool_c.so of the build")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    if platform.machine() != "x86_64":
        sys.exit(f"make_wheel: only x86_64 is built and tested, not {platform.machine()}")
    version = library_version(args.library)
    with tempfile.TemporaryDirectory(prefix="kvpool-wheel-") as tmp:
        stage = pathlib.Path(tmp)
        pkg = stage / "kvpool"
        for src in sorted(args.source.rglob("*.py")):
            dst = pkg / src.relative_to(args.source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        native = pkg / "_native"
        manifest = stage_native(args.library, native)
        (native / "BUNDLED.txt").write_text(
            "# bundled file\tsoname\tcopied from\tDebian package\tversion\n" + "\n".join(manifest) + "\n")
        objects = check_closed(native)
        glibc = max_version(objects, "GLIBC")
        glibcxx = max_version(objects, "GLIBCXX")
        cxxabi = max_version(objects, "CXXABI")
        tag = f"py3-none-manylinux_{platform_glibc(glibc, glibcxx)}_x86_64"
        readme = (args.source.parent / "README.md").read_text()
        modules = sorted(p.name for p in (native / "ucx").iterdir())
        wheel = write_wheel(stage, args.out, version, tag, readme)
    size = wheel.stat().st_size
    print(f"{wheel} ({size / 2**20:.1f} MiB)")
    print(f"tag {tag}: symbols need GLIBC_{'.'.join(map(str, glibc))}, and libstdc++ (not bundled) with "
          f"GLIBCXX_{'.'.join(map(str, glibcxx))} and CXXABI_{'.'.join(map(str, cxxabi))}")
    print("bundled:", " ".join(line.split("\t")[1] for line in manifest))
    print("UCX modules:", " ".join(modules))


if __name__ == "__main__":
    main()
