#
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

import testtools

from heat_gpu import overlay


class Props(dict):
    """A stand-in with an attribute besides the mapping, as heat's Properties has."""

    schema = {'a': 'schema of a'}


class Holder:
    def __init__(self) -> None:
        self.properties = Props(a=1, b=2)


class OverlayTest(testtools.TestCase):

    def test_overrides_win_and_the_rest_is_delegated(self):
        view = overlay.PropertiesOverlay(Props(a=1, b=2), {'b': 20, 'c': 30})
        self.assertEqual({'a': 1, 'b': 20, 'c': 30}, dict(view))
        self.assertEqual(3, len(view))
        self.assertEqual({'a': 'schema of a'}, view.schema)

    def test_properties_restored_after_the_block_even_on_error(self):
        holder = Holder()
        live = holder.properties
        with overlay.properties_overridden(holder, {'a': 10}):
            self.assertEqual(10, holder.properties['a'])
        self.assertIs(live, holder.properties)

        def boom() -> None:
            with overlay.properties_overridden(holder, {'a': 10}):
                raise RuntimeError('boom')
        self.assertRaises(RuntimeError, boom)
        self.assertIs(live, holder.properties)
