/**
 * Python (3.6+) that tells which version of a module a python has, shared by the remote supervisor and the local
 * check of `cluster start`. `installed(name)` reads the metadata of the distribution beside the package an import
 * would load — without importing it: ~40 ms instead of ~400 ms for ipyparallel — and imports it only when there is
 * none beside it (a checkout on PYTHONPATH, a shadowing copy) or metadata cannot be read (Python < 3.8).
 * `imported(name)` imports it (what a kernel's start needs to know works). Both answer None for a module that
 * cannot be found or imported, and '' for one without a version.
 */
export const PYTHON_VERSIONS = String.raw`
def imported(name):
    try:
        return str(getattr(__import__(name), '__version__', ''))
    except Exception:
        return None


def installed(name):
    try:
        import importlib.metadata, importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None:
            return None
        where = list(spec.submodule_search_locations or []) or [spec.origin or '']
        for dist in importlib.metadata.distributions(path=[os.path.dirname(where[0])]):
            if (dist.metadata['Name'] or '').lower().replace('_', '-') == name.lower().replace('_', '-'):
                return dist.version
    except Exception:
        pass
    return imported(name)
`
