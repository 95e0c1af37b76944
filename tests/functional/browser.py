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

"""A person at Horizon: Debian's headless Chromium driven by Selenium.

``Horizon`` logs in, opens Launch Stack from the Stacks page, gives the template by file upload or
by URL, reads the form Horizon built from it (every parameter's widget, its choices and what it
holds), fills in what has no default, launches, and reads the stack's status and outputs from the
stack's own Overview page. Screenshots go to a directory of the caller's choosing; the browser's
console is read after every page.
"""

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Optional

CHROMIUM = ('/usr/bin/chromium', '/usr/bin/chromium-browser')
CHROMEDRIVER = ('/usr/bin/chromedriver', '/usr/lib/chromium/chromedriver')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--window-size=1400,1000')
PARAM_PREFIX = '__param_'


def find_browser() -> tuple[Optional[str], Optional[str]]:
    """Paths of chromium and chromedriver, None for one that is missing."""
    browser = next((p for p in CHROMIUM if os.access(p, os.X_OK)), None)
    driver = next((p for p in CHROMEDRIVER if os.access(p, os.X_OK)), None)
    return browser, driver


@dataclasses.dataclass
class Field:
    """One parameter field of Launch Stack's second page, as the browser shows it."""

    name: str
    label: str
    widget: str               # 'drop-down', 'whole number', 'text', 'checkbox', 'password'
    value: str                # what it holds as the form opens ('' for none)
    choices: list             # (value, text) of a drop-down
    required: bool
    minimum: Optional[str] = None
    maximum: Optional[str] = None
    help: str = ''


class Horizon:
    """One browser session against one Horizon."""

    def __init__(self, *, url: str, shots: str, timeout: float = 60.0) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome import service

        browser, driver = find_browser()
        self.url = url.rstrip('/')
        self.shots = shots
        self.timeout = timeout
        self.console: list[dict] = []
        self._profile = tempfile.mkdtemp(prefix='heat-gpu-chromium-')
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS + ('--user-data-dir=' + self._profile,):
            options.add_argument(flag)
        options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        self.driver = webdriver.Chrome(options=options, service=service.Service(driver))
        self.driver.implicitly_wait(0)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # Small helpers

    def _wait(self, predicate, *, what: str, timeout: Optional[float] = None):
        from selenium.common import exceptions
        from selenium.webdriver.support import ui

        try:
            wait = ui.WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.25)
            return wait.until(lambda d: predicate())
        except exceptions.TimeoutException:
            self.screenshot('timeout')
            raise AssertionError('%s did not happen within %d s (page %s)' % (
                what, timeout or self.timeout, self.driver.current_url)) from None

    def _css(self, selector: str, *, root=None) -> list:
        from selenium.webdriver.common.by import By
        return (root or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def screenshot(self, name: str) -> str:
        """The whole page (the window grows to its height for the picture) as ``name``.png."""
        os.makedirs(self.shots, exist_ok=True)
        path = os.path.join(self.shots, '%s.png' % name)
        size = self.driver.get_window_size()
        height = self.driver.execute_script(
            'return Math.max(document.body.scrollHeight, '
            'document.documentElement.scrollHeight, window.innerHeight);')
        self.driver.set_window_size(size['width'], min(int(height) + 120, 8000))
        try:
            self.driver.save_screenshot(path)
        finally:
            self.driver.set_window_size(size['width'], size['height'])
        return path

    def read_console(self) -> list[dict]:
        """Browser console entries since the last call (kept in ``self.console`` too)."""
        entries = self.driver.get_log('browser')
        self.console.extend(entries)
        return entries

    def console_errors(self) -> list[str]:
        self.read_console()
        return [e['message'] for e in self.console if e.get('level') == 'SEVERE']

    def error_messages(self) -> list[str]:
        """Horizon's error alerts and form errors on the current page."""
        texts = [e.text.strip() for e in self._css('.alert-danger, .messages .alert-error, '
                                                   '.help-block.error, .error .help-block')]
        return [t for t in texts if t]

    # Pages

    def login(self, *, user: str, password: str) -> None:
        self.driver.get(self.url + '/auth/login/')
        self._wait(lambda: self._css('#id_username'), what='the login form')
        self._css('#id_username')[0].send_keys(user)
        self._css('#id_password')[0].send_keys(password)
        self._css('#loginBtn, button[type=submit]')[0].click()
        self._wait(lambda: '/auth/login' not in self.driver.current_url,
                   what='login of %s' % user)
        self.read_console()

    def open_launch_stack(self) -> None:
        """The Stacks page, then its Launch Stack button: the Select Template dialog."""
        self.driver.get(self.url + '/project/stacks/')
        self._wait(lambda: self._css('#stacks__action_launch'), what='the Stacks page')
        self._css('#stacks__action_launch')[0].click()
        self._wait(lambda: self._css('#modal_wrapper #id_template_upload'),
                   what='the Select Template dialog')
        self.read_console()

    def _choose_template_source(self, value: str) -> None:
        """Pick a Template Source entry the way a person does: open the drop-down, click it."""
        group = self._css('#id_template_source')[0].find_element(
            'xpath', './ancestor::div[contains(@class, "form-group")]')
        toggles = self._css('.themable-select .dropdown-toggle, button.dropdown-toggle', root=group)
        if toggles:
            toggles[0].click()
            items = self._css('[data-select-value="%s"]' % value, root=group)
            self._wait(lambda: items[0].is_displayed(), what='the Template Source menu')
            items[0].click()
        else:
            from selenium.webdriver.support import ui
            ui.Select(self._css('#id_template_source')[0]).select_by_value(value)

    def give_template(self, *, path: Optional[str] = None, url: Optional[str] = None) -> None:
        """File upload (``path``) or URL (``url``), then Next: wait for Launch Stack's form."""
        if url:
            self._choose_template_source('url')
            box = self._css('#id_template_url')[0]
            self._wait(box.is_displayed, what='the Template URL field')
            box.send_keys(url)
        else:
            self._css('#id_template_upload')[0].send_keys(os.path.abspath(path))
        self._css('#modal_wrapper .modal-footer [type=submit]')[0].click()

        def form_or_error():
            return self._css('#modal_wrapper #id_stack_name') or self.error_messages()
        self._wait(form_or_error, what='the Launch Stack form')
        errors = self.error_messages()
        if errors and not self._css('#modal_wrapper #id_stack_name'):
            raise AssertionError('Launch Stack refused the template: %s' % ' | '.join(errors))
        time.sleep(0.5)
        self.read_console()

    def fields(self) -> list[Field]:
        """The parameter fields of the Launch Stack form, in the order shown."""
        found = []
        for el in self._css('#modal_wrapper form [name^="%s"]' % PARAM_PREFIX):
            name = el.get_attribute('name')[len(PARAM_PREFIX):]
            field_id = el.get_attribute('id')
            labels = self._css('label[for="%s"]' % field_id)
            label = labels[0].text.strip() if labels else ''
            group = el.find_element('xpath', './ancestor::div[contains(@class, "form-group")]')
            helps = self._css('.help-icon', root=group)
            help_text = helps[0].get_attribute('title').strip() if helps else ''
            tag = el.tag_name.lower()
            kind = (el.get_attribute('type') or '').lower()
            choices = []
            if tag == 'select':
                widget = 'drop-down'
                choices = [(o.get_attribute('value'), o.text.strip())
                           for o in self._css('option', root=el)]
                value = el.get_attribute('value') or ''
            elif kind == 'checkbox':
                widget = 'checkbox'
                value = 'checked' if el.is_selected() else 'unchecked'
            elif kind == 'number':
                widget = 'whole number'
                value = el.get_attribute('value') or ''
            elif kind == 'password':
                widget = 'password'
                value = el.get_attribute('value') or ''
            else:
                widget = 'text'
                value = el.get_attribute('value') or ''
            found.append(Field(name=name, label=label.rstrip(' *'), widget=widget, value=value,
                               choices=choices,
                               required='required' in (group.get_attribute('class') or '').split(),
                               minimum=el.get_attribute('min'), maximum=el.get_attribute('max'),
                               help=help_text))
        return found

    def fill(self, *, stack_name: str, values: dict) -> None:
        """Type the stack name and the given parameter values (drop-downs: by option value)."""
        from selenium.webdriver.support import ui

        box = self._css('#id_stack_name')[0]
        box.clear()
        box.send_keys(stack_name)
        for name, value in values.items():
            el = self._css('#id_%s%s' % (PARAM_PREFIX, name))[0]
            if el.tag_name.lower() == 'select':
                ui.Select(el).select_by_value(value)
            elif (el.get_attribute('type') or '').lower() == 'checkbox':
                if el.is_selected() != bool(value):
                    el.click()
            else:
                el.clear()
                el.send_keys(str(value))

    def launch(self) -> None:
        """Press Launch; wait until Horizon is back on the Stacks page."""
        self._css('#modal_wrapper .modal-footer [type=submit]')[0].click()

        def done():
            if self._css('#modal_wrapper #id_stack_name') and self.error_messages():
                return True
            return (self.driver.current_url.rstrip('/').endswith('/project/stacks')
                    and not self._css('#modal_wrapper .modal'))
        self._wait(done, what='Launch Stack to return to the Stacks page', timeout=120)
        errors = self.error_messages()
        if errors:
            raise AssertionError('Launch Stack failed: %s' % ' | '.join(errors))
        self.read_console()

    def stack_id(self, stack_name: str) -> str:
        """The ID of the stack named ``stack_name``, from the link in the Stacks table."""
        def link():
            self.driver.get(self.url + '/project/stacks/')
            for a in self._css('#stacks a[href*="/project/stacks/stack/"]'):
                if a.text.strip() == stack_name:
                    return a.get_attribute('href')
            return None
        href = self._wait(link, what='stack %s in the Stacks table' % stack_name)
        return href.rstrip('/').rsplit('/', 1)[1]

    def overview(self, stack_id: str) -> dict:
        """The stack's Overview tab: its status line and its outputs, in the order shown."""
        self.driver.get('%s/project/stacks/stack/%s/?tab=stack_details__stack_overview'
                        % (self.url, stack_id))
        self._wait(lambda: self._css('.detail dl'), what='the stack Overview page')
        tabs = [a for a in self._css('.nav-tabs a') if a.text.strip() == 'Overview']
        if tabs:
            tabs[0].click()
        data = self.driver.execute_script('''
            var out = {status: '', outputs: []};
            document.querySelectorAll('.detail h4').forEach(function (h) {
              var dl = h.nextElementSibling;
              while (dl && dl.tagName !== 'DL') { dl = dl.nextElementSibling; }
              if (!dl) { return; }
              var title = h.textContent.trim();
              if (title === 'Status') {
                dl.querySelectorAll('dt').forEach(function (dt) {
                  if (dt.textContent.trim() === 'Status') {
                    out.status = dt.nextElementSibling.textContent.trim();
                  }
                });
              }
              if (title === 'Outputs') {
                var current = null;
                Array.prototype.forEach.call(dl.children, function (el) {
                  if (el.tagName === 'DT') {
                    current = {key: el.textContent.trim(), texts: []};
                    out.outputs.push(current);
                  } else if (current) {
                    current.texts.push(el.textContent.trim());
                  }
                });
              }
            });
            return out;''')
        self.read_console()
        outputs = [(o['key'], o['texts'][-1] if o['texts'] else '') for o in data['outputs']]
        return {'status': ' '.join(data['status'].split()), 'outputs': outputs}

    def wait_for_status(self, stack_id: str, *, status: str, timeout: float) -> dict:
        """Reload the Overview page until it shows ``status`` (e.g. Create_Complete).

        Fails on a *_Failed status or after ``timeout`` seconds, with the status line Horizon shows.
        """
        deadline = time.monotonic() + timeout
        while True:
            page = self.overview(stack_id)
            shown = page['status'].split(':', 1)[0].strip()
            if shown.lower() == status.lower():
                return page
            if shown.lower().endswith('_failed'):
                raise AssertionError('stack %s is %s in Horizon' % (stack_id, page['status']))
            if time.monotonic() > deadline:
                raise AssertionError('stack %s still "%s" in Horizon after %d s' % (
                    stack_id, page['status'], timeout))
            time.sleep(5)
