# Sourced by scripts/test.sh: Slurm (Debian's slurmctld, slurmd, slurm-client, 22.05) and munge
# for the slurm provider's tests, which run the daemons themselves, one slurmd per
# network-namespace host, with a generated slurm.conf. The packages' own services are not used.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
  || ! command -v scontrol >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
