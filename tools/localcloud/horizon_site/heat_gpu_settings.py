#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

# Horizon settings of the local cloud: a settings snippet (``local_settings.d``) that Horizon's
# own settings module executes in its namespace, after heat-dashboard's snippet.
# tools/bootstrap-horizon.sh links it into the Horizon virtualenv; the configure step of
# tools/localcloud/horizon.py writes the values of one cloud (Keystone URL, secret key) to a JSON
# file and names it in HEAT_GPU_HORIZON_CONFIG. Without that variable (collectstatic and compress
# at bootstrap) only what the static files depend on is set.
# pylint: disable=undefined-variable,used-before-assignment

import json as _json
import os as _os
import sys as _sys

_conf_path = _os.environ.get('HEAT_GPU_HORIZON_CONFIG')
_conf = {}
if _conf_path:
    with open(_conf_path, encoding='utf-8') as _f:
        _conf = _json.load(_f)

DEBUG = False
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
WEBROOT = '/'
# Collected and compressed into the virtualenv (sys.prefix) by tools/bootstrap-horizon.sh.
STATIC_ROOT = _os.path.join(_sys.prefix, 'static')
# Compressed once at bootstrap (manage.py compress), so no request compiles SCSS.
COMPRESS_OFFLINE = True
COMPRESS_ENABLED = True

SECRET_KEY = _conf.get('secret_key', 'bootstrap-only-not-served')
OPENSTACK_KEYSTONE_URL = _conf.get('keystone_url', 'http://127.0.0.1:5000/v3')
OPENSTACK_KEYSTONE_DEFAULT_ROLE = 'member'
OPENSTACK_KEYSTONE_DEFAULT_DOMAIN = 'Default'
OPENSTACK_API_VERSIONS = {'identity': 3, 'compute': 2}
OPENSTACK_ENDPOINT_TYPE = 'publicURL'
# The local cloud has no network, volume or object service: no panels for them.
OPENSTACK_NEUTRON_NETWORK = {'enable_router': False, 'enable_quotas': False,
                             'enable_distributed_router': False, 'enable_ha_router': False,
                             'enable_fip_topology_check': False}
OPENSTACK_HYPERVISOR_FEATURES = {'can_set_mount_point': False, 'can_set_password': False,
                                 'requires_keypair': False, 'enable_quotas': False}

# One gunicorn worker: sessions live in its memory (no memcached here).
CACHES = {'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}}
SESSION_ENGINE = 'django.contrib.sessions.backends.cache'
SESSION_TIMEOUT = 3600

# Heat uses trusts (deferred_auth_method = trusts): Launch Stack needs no password.
OPENSTACK_HEAT_STACK = {'enable_user_pass': False}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {'plain': {'format': '%(asctime)s %(levelname)s %(name)s: %(message)s'}},
    'handlers': {'stderr': {'class': 'logging.StreamHandler', 'formatter': 'plain'}},
    'root': {'handlers': ['stderr'], 'level': 'INFO'},
    'loggers': {
        'django': {'handlers': ['stderr'], 'level': 'INFO', 'propagate': False},
        'django.request': {'handlers': ['stderr'], 'level': 'WARNING', 'propagate': False},
        'horizon': {'handlers': ['stderr'], 'level': 'INFO', 'propagate': False},
        'openstack_dashboard': {'handlers': ['stderr'], 'level': 'INFO', 'propagate': False},
        'heat_dashboard': {'handlers': ['stderr'], 'level': 'INFO', 'propagate': False},
        'openstack_auth': {'handlers': ['stderr'], 'level': 'INFO', 'propagate': False},
        'keystoneauth': {'handlers': ['stderr'], 'level': 'WARNING', 'propagate': False},
    },
}
