"""Example pipelines shipped with the package; `pipedeploy up --demo` deploys `demo.score`."""
