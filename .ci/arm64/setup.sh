#!/usr/bin/env bash
# An emulated aarch64 (ARM64) Linux CPython 3.11 + PyTorch 2.13.0 environment on an x86-64 Debian 12 host,
# run through qemu-user, so that gpt2kit's ARM code paths (kernel choice, QNNPACK int8, oneDNN/ACL packing,
# Neoverse names, ARM bf16) run on a machine without ARM hardware: see .ci/arm64/run. Needs root (apt) and
# ~8 GB of disk: PyPI's aarch64 torch wheel is the CUDA build, with its nvidia wheels. Idempotent: re-running
# skips or redoes steps harmlessly. Usage: bash .ci/arm64/setup.sh   (ARM64_BASE=/other/dir to build elsewhere)
# Afterwards run Python as:  $BASE/bin/py [args]     (ARM64_CPU=neoverse-n1 $BASE/bin/py ... for another CPU)
set -euo pipefail
BASE=${ARM64_BASE:-$HOME/.cache/gpt2kit-arm64}
R=$BASE/root              # aarch64 sysroot (Debian bookworm arm64 .debs, extracted with dpkg -x)
A=$BASE/apt               # private apt state: the host's dpkg/apt config is NOT touched (no --add-architecture)
W=$BASE/wheels            # aarch64 wheels, downloaded natively on the host
V=$BASE/venv              # venv created by the emulated python
mkdir -p "$BASE" "$W" "$BASE/debs" "$BASE/bin" "$BASE/cache"

# 1. qemu-user-static (Debian 12: qemu 7.2).  The only change to the host system.
command -v qemu-aarch64-static >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static
}

# 2. Private arm64 apt configuration so `apt-get download` fetches arm64 .debs without adding arm64 to host dpkg.
mkdir -p "$A/state/lists/partial" "$A/cache/archives/partial" "$A/etc/sources.list.d" "$A/etc/preferences.d"
touch "$A/state/status"
KR=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$A/etc/sources.list" <<EOF
deb [arch=arm64 signed-by=$KR] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=$KR] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=$KR] http://deb.debian.org/debian-security bookworm-security main
EOF
cat > "$A/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$A/state";
Dir::State::status "$A/state/status";
Dir::Cache "$A/cache";
Dir::Etc::SourceList "$A/etc/sources.list";
Dir::Etc::SourceParts "$A/etc/sources.list.d";
Dir::Etc::Preferences "$A/etc/preferences";
Dir::Etc::PreferencesParts "$A/etc/preferences.d";
EOF
export APT_CONFIG=$A/apt.conf
apt-get update -qq

# 3. Runtime closure of python3.11 + python3.11-venv + libstdc++/libgomp/libgfortran (from
#    `apt-cache depends --recurse --no-recommends`), minus perl/dpkg/debconf/tar tooling that is not needed.
PKGS="gcc-12-base libacl1 libbz2-1.0 libc6 libcom-err2 libcrypt1 libdb5.3 libexpat1 libffi8 libgcc-s1
 libgdbm-compat4 libgdbm6 libgfortran5 libgomp1 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3
 libkrb5support0 liblzma5 libmd0 libncursesw6 libnsl2 libpcre2-8-0 libpython3-stdlib libpython3.11-minimal
 libpython3.11-stdlib libreadline8 libselinux1 libsqlite3-0 libssl3 libstdc++6 libtinfo6 libtirpc-common
 libtirpc3 libuuid1 libzstd1 media-types python3 python3-distutils python3-lib2to3 python3-minimal
 python3-pip-whl python3-setuptools-whl python3.11 python3.11-minimal python3.11-venv readline-common zlib1g"
# (apt warns "Download is performed unsandboxed as root" because _apt cannot write here: harmless)
(cd "$BASE/debs" && rm -f ./*.deb && apt-get download -q $PKGS)
for d in "$BASE"/debs/*.deb; do dpkg -x "$d" "$R"; done

# 4. Make absolute symlinks inside the sysroot relative (e.g. usr/lib/python3.11/sitecustomize.py ->
#    /etc/python3.11/...), so they resolve inside the sysroot and not on the host.
find "$R" -type l -lname '/*' | while read -r l; do
  t=$(readlink "$l"); ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$R$t")" "$l"
done

# 5. Fake aarch64 /proc/cpuinfo and MIDR_EL1 sysfs entries.  qemu 7.2 user mode passes the HOST's
#    x86 /proc/cpuinfo through; PyTorch's cpuinfo library then segfaults at `import torch`, and oneDNN's
#    xbyak_aarch64 prints "Can't open MIDR_EL1 sysfs entry".  qemu -L / QEMU_LD_PREFIX looks every absolute
#    path up in the sysroot first, so these files shadow the host ones for emulated processes only.
#    Contents: a Neoverse-N1 (implementer 0x41, part 0xd0c r3p1), 2 CPUs like the host.  ISA features are
#    taken from AT_HWCAP (what qemu -cpu emulates), not from this text.
mkdir -p "$R/proc"
: > "$R/proc/cpuinfo"
for i in 0 1; do
  mkdir -p "$R/sys/devices/system/cpu/cpu$i/regs/identification"
  echo 0x00000000413fd0c1 > "$R/sys/devices/system/cpu/cpu$i/regs/identification/midr_el1"
  printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i" >> "$R/proc/cpuinfo"
done

# 6. Wrapper to run the emulated python (QEMU_LD_PREFIX = sysroot; -cpu from $ARM64_CPU, default max).
#    PYTHONDONTWRITEBYTECODE: don't drop .pyc into checkouts it runs (e.g. /work/main).
#    GPT2KIT_KERNEL_CACHE: keep gpt2kit's kernel autotune cache out of the shared ~/.cache.
cat > "$BASE/bin/py" <<EOF
#!/usr/bin/env bash
export QEMU_LD_PREFIX="$R"
export PYTHONDONTWRITEBYTECODE=\${PYTHONDONTWRITEBYTECODE:-1}
export GPT2KIT_KERNEL_CACHE="\${GPT2KIT_KERNEL_CACHE:-$BASE/cache/kernels.json}"
export QEMU_CPU=\${ARM64_CPU:-max}   # qemu-user reads the CPU model from here: subprocesses get it too
exec qemu-aarch64-static "$V/bin/python" "\$@"
EOF
chmod +x "$BASE/bin/py"

export QEMU_LD_PREFIX=$R
qemu-aarch64-static "$R/usr/bin/python3.11" -c "import platform,ssl,sqlite3,ctypes; assert platform.machine()=='aarch64'"

# 7. aarch64 wheels, resolved and downloaded natively on the host (fast).  PyPI's torch 2.13.0 aarch64
#    wheel is the CUDA 13 build (torch 2.13.0+cu130); its Requires-Dist pins nvidia-* / cuda-toolkit /
#    triton wheels whose aarch64 files are tagged manylinux_2_18 / _2_27 / 2014, so list every
#    manylinux_2_17.._2_35 tag (pip does not expand --platform downwards).  ~2.7 GB.
PLAT="--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_aarch64"
for p in $(seq 17 35); do PLAT="$PLAT --platform manylinux_2_${p}_aarch64"; done
# transformers and hypothesis: the tests' oracle and property tests (tests/ import them).
REQS="torch==2.13.0 safetensors regex tiktoken numpy tqdm pytest setuptools transformers>=4.57,<5 hypothesis"
pip download -q $PLAT -d "$W" $REQS pip

# 8. venv made by the emulated interpreter (home = $R/usr/bin), then pip into it, run from the pip wheel
#    under emulation (proves pip works there; `$BASE/bin/py -m pip ...` is usable afterwards).
[ -x "$V/bin/python" ] || qemu-aarch64-static "$R/usr/bin/python3.11" -m venv --without-pip "$V"
qemu-aarch64-static "$V/bin/python" -m pip --version >/dev/null 2>&1 || {
  PIPWHL=$(ls "$W"/pip-*.whl | sort -V | tail -1)
  qemu-aarch64-static "$V/bin/python" "$PIPWHL/pip" install -q --isolated --no-index --find-links "$W" pip
}

# 9. Install the rest NATIVELY with the host pip into the venv's site-packages (--target + --platform):
#    unpacking 4.5 GB and byte-compiling torch under qemu would take many minutes of shared CPU; the files
#    are identical either way, and host CPython 3.11 writes .pyc with the same magic as Debian's 3.11.2.
SP=$V/lib/python3.11/site-packages
if ! grep -qx 'Version: 2.13.0' "$SP"/torch-2.13.0.dist-info/METADATA 2>/dev/null || [ ! -d "$SP/transformers" ]; then
  pip install -q --isolated $PLAT --no-index --find-links "$W" --target "$SP" --upgrade $REQS
fi
rm -rf "$SP/bin"   # console scripts written by --target carry host shebangs; use `$BASE/bin/py -m ...`

# 10. Register qemu for aarch64 ELF files (binfmt_misc) where this host allows it (root), so that a test that
#     starts sys.executable in a subprocess runs it emulated too (else: "Exec format error"). The child
#     inherits QEMU_LD_PREFIX (the sysroot) and QEMU_CPU (the CPU model) from bin/py.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  if [ -w /proc/sys/fs/binfmt_misc/register ] && [ -e /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
  else
    echo "binfmt_misc is not writable here: tests that start a subprocess will fail under emulation" >&2
  fi
fi

# 11. Smoke check under emulation.
"$BASE/bin/py" -c "import platform, torch; x=torch.randn(8,8); print(platform.machine(), torch.__version__, torch.backends.cpu.get_cpu_capability(), float((x@x).sum())==float((x@x).sum()))"
echo "OK: run python as $BASE/bin/py (or: QEMU_LD_PREFIX=$R qemu-aarch64-static -cpu max $V/bin/python)"
