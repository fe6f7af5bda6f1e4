# Shared by the experiment scripts: find the simulator and the data.
# KVB_BUILD (default build/main) is the build tree; KVB_DATA (default
# ../shared/data) holds the traces.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${KVB_BUILD:-$top/build/main}
SIM=${KVB_SIM:-$build/src/tools/kvbridge-sim}
DATA=${KVB_DATA:-$top/../shared/data}
if [ ! -x "$SIM" ]; then
	echo "kvbridge-sim not found at $SIM: run 'bash scripts/setup-and-run.sh' first, or set KVB_SIM" >&2
	exit 1
fi
need_trace() {
	if [ ! -r "$DATA/$1" ]; then
		echo "$DATA/$1 not found: set KVB_DATA to the folder holding the traces (shared/data)" >&2
		exit 1
	fi
}
# pick field N (1-based, after splitting on spaces) of the summary line matching PAT
sumfield() { grep -E "$2" "$1" | head -n 1 | tr -s ' ' | cut -d' ' -f"$3"; }
