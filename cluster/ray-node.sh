#!/usr/bin/env bash
# Start one Ray node in the foreground, sized by SLURM; run by ray-cluster.sbatch through srun.
#   ray-node.sh head <node-ip> <node-index>
#   ray-node.sh worker <node-ip> <node-index> <head-ip:port>
# The node stops (with all its Ray processes) when this step gets SIGTERM, e.g. from scancel.
set -euo pipefail
role=$1 ip=$2 index=$3 head=${4:-}

cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
# GPUs: the ones SLURM gave this step (it sets CUDA_VISIBLE_DEVICES for --gres/--gpus), else none.
gpus=0
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
  IFS=, read -r -a devices <<< "$CUDA_VISIBLE_DEVICES"
  gpus=${#devices[@]}
fi

# Per-job port block (see ray-cluster.sbatch); each node of the job its own ports inside it.
base=$TICKETS_PORT_BASE
node_base=$(( base + 10 + index * 6 ))
common=(
  --block --node-ip-address="$ip" --num-cpus="$cpus" --num-gpus="$gpus"
  --temp-dir="$TICKETS_RAY_TMP"
  --node-manager-port=$(( node_base )) --object-manager-port=$(( node_base + 1 ))
  --metrics-export-port=$(( node_base + 2 )) --dashboard-agent-listen-port=$(( node_base + 3 ))
  --dashboard-agent-grpc-port=$(( node_base + 4 ))
  --min-worker-port=$(( base + 100 )) --max-worker-port=$(( base + 599 ))
)
echo "ray-node: $role $(hostname) ip=$ip cpus=$cpus gpus=$gpus"
if [[ $role == head ]]; then
  exec "$TICKETS_RAY" start --head --port="$base" --dashboard-host=127.0.0.1 --dashboard-port=$(( base + 1 )) \
    --ray-client-server-port=$(( base + 2 )) "${common[@]}"
else
  exec "$TICKETS_RAY" start --address="$head" "${common[@]}"
fi
