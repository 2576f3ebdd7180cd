#!/usr/bin/env bash
# Build the project's Bochs 3.0: headless (nogui), no built-in debugger, from
# Debian's own source package, into DEST (default .cache/bochs-3.0).
#
#   tools/build-bochs.sh [DEST]
#
# Debian 13 ships Bochs 3.0 but Debian 12 only 2.7, whose VMX keeps an INIT
# pending after an INIT VM exit and whose CPU models stop at Tiger Lake
# (docs/emulators.md). So every machine builds the same 3.0 from the source
# package of Debian 13 ("trixie"), fetched by apt-get under a private sources
# list and private state: the system's apt configuration is not touched.
#
# Debian's own patches touch only the BIOS build, the documentation and the
# sample bochsrc, so the emulator is built from the original tarball, with
# the project's changes:
# - BX_MAX_TIMERS goes from 64 to 512, as each CPU takes a few timers and 64
#   stop Bochs at 16 CPUs ("register_timer: too many registered timers");
# - tools/bochs-patches/*.patch, each saying what it fixes (a SIPI VM exit
#   taken in the sender's context, which loses SIPIs broadcast to several
#   guests in wait-for-SIPI). docs/emulators.md lists them.
#
# Nothing is half-written: the build happens in DEST.work and DEST appears
# only when bin/bochs is there. A failure is one line on stderr that names
# what failed (and the Debian package to install, where that is the cause);
# the logs stay in DEST.work.
set -euo pipefail

VERSION=3.0
SUITE=trixie
DEST=${1:-.cache/bochs-$VERSION}
DEST=$(realpath -m "$DEST")
WORK=$DEST.work
JOBS=$(nproc 2>/dev/null || echo 2)
PATCHES=$(cd "$(dirname "$0")/bochs-patches" && pwd)

# What the hypervisor needs of the emulator: VMX with EPT and unrestricted
# guest (vmx=2), SVM for the AMD backend, several CPUs, and the ISA of the
# newest models (AVX-512, CET, UINTR, protection keys) so that
# sapphire_rapids and arrow_lake are what they say. Not AMX: Bochs 3.0 has
# AMX without XFD (IA32_XFD, CPUID.(0xD,1):EAX[4]), which no real CPU has, and
# Linux 6.1 then enables XTILECFG without XTILEDATA: #GP in XSETBV at boot.
# Not --enable-show-ips (configure's default): it prints "ips = ..." to the
# log from a SIGALRM handler, with stdio, and a signal that lands while the
# emulator itself writes a log line deadlocks on the log's lock (a Bochs
# found asleep in futex_wait, single-threaded: the runs named "stalled").
CONFIGURE_FLAGS=(
  --with-nogui
  --enable-x86-64 --enable-cpu-level=6 --enable-smp
  --enable-vmx=2 --enable-svm
  --enable-avx --enable-evex --enable-cet --enable-uintr
  --enable-protection-keys --enable-memtype --enable-a20-pin --enable-fpu
  --enable-pci
  --enable-all-optimizations --enable-repeat-speedups
  --disable-show-ips
)

fail() { echo "error: building Bochs $VERSION: $*" >&2; exit 1; }

need() {    # need PROGRAM PACKAGE
  command -v "$1" >/dev/null 2>&1 ||
    fail "'$1' is missing (as root: apt-get install $2)"
}

if [ -x "$DEST/bin/bochs" ]; then
  echo "Bochs $VERSION: $DEST/bin/bochs is there"
  exit 0
fi

need apt-get apt
need g++ g++
need make make
need xz xz-utils
need tar tar
need patch patch

# The archive this machine's apt already uses (deb822 or one-line sources).
archive=$(
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{ print $2 }'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      | awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; break } }'
  } | grep -v -- '-security' | grep '/debian/\?$' | head -n 1 || true)
[ -n "$archive" ] ||
  fail "no Debian archive found in /etc/apt/sources.list{,.d} to fetch the source package from"

rm -rf "$WORK"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/src"
echo "deb-src $archive $SUITE main" > "$WORK/apt/sources.list"
apt=(apt-get -q
     -o "Dir::Etc::sourcelist=$WORK/apt/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
     -o APT::Sandbox::User=root)

echo "Bochs $VERSION: fetching Debian's source package (bochs, $SUITE)"
"${apt[@]}" update >"$WORK/apt.log" 2>&1 ||
  fail "apt-get update of $archive $SUITE failed (see $WORK/apt.log)"
# Only the tarballs are needed; the archive has answered 404 for the .dsc, so
# apt-get's status is not the test, the tarball is.
(cd "$WORK/src" && "${apt[@]}" source --download-only "bochs" >>"$WORK/apt.log" 2>&1) || true
orig=$(ls "$WORK"/src/bochs_"$VERSION"+dfsg.orig.tar.* 2>/dev/null | head -n 1)
[ -n "$orig" ] ||
  fail "Debian's source package did not provide bochs_$VERSION+dfsg.orig.tar.xz (see $WORK/apt.log)"

echo "Bochs $VERSION: configuring and compiling ($JOBS jobs; a few minutes)"
tar -xf "$orig" -C "$WORK/src"
src=$WORK/src/bochs-$VERSION
[ -d "$src" ] || fail "$orig did not unpack to bochs-$VERSION"
sed -i 's/^#define BX_MAX_TIMERS 64$/#define BX_MAX_TIMERS 512/' "$src/pc_system.h"
grep -q '^#define BX_MAX_TIMERS 512$' "$src/pc_system.h" ||
  fail "BX_MAX_TIMERS not found in pc_system.h"
for p in "$PATCHES"/*.patch; do
  patch -d "$src" -p1 --forward --quiet < "$p" >>"$WORK/patch.log" 2>&1 ||
    fail "$(basename "$p") does not apply (see $WORK/patch.log)"
done

(cd "$src" && ./configure "${CONFIGURE_FLAGS[@]}") >"$WORK/configure.log" 2>&1 ||
  fail "configure failed: $(tail -n 1 "$WORK/configure.log") (see $WORK/configure.log)"
make -C "$src" -j"$JOBS" bochs >"$WORK/make.log" 2>&1 ||
  fail "make failed (see $WORK/make.log)"
"$src/bochs" --help cpu 2>&1 | grep -q "Bochs x86 Emulator $VERSION" ||
  fail "the new binary does not run as Bochs $VERSION (see $WORK/make.log)"

mkdir -p "$WORK/out/bin"
cp "$src/bochs" "$WORK/out/bin/bochs"
{ echo "Bochs $VERSION from Debian's source package: $(basename "$orig")"
  echo "configure ${CONFIGURE_FLAGS[*]}"
  echo "pc_system.h: BX_MAX_TIMERS 512"
  for p in "$PATCHES"/*.patch; do echo "patch: $(basename "$p"): $(head -n 1 "$p")"; done
} > "$WORK/out/BUILD-INFO"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
rm -rf "$WORK"
echo "Bochs $VERSION: $DEST/bin/bochs"
