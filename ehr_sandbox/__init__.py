"""A dev/test EHR (real FHIR server, SMART authorization server, EHR shell); the product never imports it."""

from .config import SandboxClient, SandboxConfig
from .ehr_app import EhrServer, create_ehr_app
from .fhir_server import FhirServer
from .profiles import PROFILES, Profile
from .stack import SandboxStack, free_port

__all__ = ["PROFILES", "EhrServer", "FhirServer", "Profile", "SandboxClient", "SandboxConfig", "SandboxStack",
           "create_ehr_app", "free_port"]
