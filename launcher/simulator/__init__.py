"""A local imitation of the DataArts Factory (DLF) job API: see `launcher.simulator.app`."""

from launcher.simulator.app import Simulator, running
from launcher.simulator.config import DEFAULT_CONFIG, IamUser, SimConfig
from launcher.simulator.stats import JobKey, SimStats

__all__ = ["DEFAULT_CONFIG", "IamUser", "JobKey", "SimConfig", "SimStats", "Simulator", "running"]
